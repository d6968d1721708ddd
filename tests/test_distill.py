"""Knowledge distillation from the dense model: the loss against a worked example, the training loop's use of
the teacher, its config and its wiring into re-training and fine-tuning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from deepkmeans.config import DistillConfig, FinetuneConfig, RetrainConfig, RunConfig, from_dict, load_config, to_dict
from deepkmeans.data import Batches
from deepkmeans.distill import distillation_loss, soft_target_kl
from deepkmeans.distributed import Rank
from deepkmeans.errors import ConfigError, DeepKMeansError
from deepkmeans.files.checkpoints import load_checkpoint, save_checkpoint
from deepkmeans.job import stages
from deepkmeans.job.commands import finetune_file
from deepkmeans.train import Loop, fit

LN3 = math.log(3)


@pytest.mark.parametrize(
    "student,teacher,weight,expected",
    [
        # T = 2. softmax(student / T) = (1/2, 1/2), softmax(teacher / T) = (3/4, 1/4); cross-entropy of class 0: ln 2.
        # KL(teacher || student) = 3/4 ln(3/2) + 1/4 ln(1/2); times T^2 = 4 and weight 1/2 it is 3/2 ln(3/2) - 1/2 ln 2,
        # so the loss is 1/2 ln 2 + 3/2 ln(3/2) - 1/2 ln 2 = 3/2 ln(3/2).
        # (The other direction gives 1/2 ln 2 + ln(4/3).)
        ([0.0, 0.0], [2 * LN3, 0.0], 0.5, 1.5 * math.log(1.5)),
        # softmax(student / T) = (1/4, 3/4), softmax(teacher / T) = (1/2, 1/2); cross-entropy of class 0:
        # -ln(1 / (1 + 9)) = ln 10. KL(teacher || student) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3), times T^2: 2 ln(4/3).
        # Loss = 3/4 ln 10 + 1/4 * 2 ln(4/3). (Without dividing the student by T its softmax would be (1/10, 9/10).)
        ([0.0, 2 * LN3], [0.0, 0.0], 0.25, 0.75 * math.log(10) + 0.5 * math.log(4 / 3)),
    ],
)
def test_distillation_loss_matches_a_hand_computed_two_class_example(
    student: list[float], teacher: list[float], weight: float, expected: float
) -> None:
    batch = 2  # two identical rows: 'batchmean' gives the per-example value ('sum' would double the KL part)
    s, t = torch.tensor([student] * batch, dtype=torch.float64), torch.tensor([teacher] * batch, dtype=torch.float64)
    y = torch.zeros(batch, dtype=torch.int64)
    assert float(distillation_loss(s, t, y, weight, 2.0)) == pytest.approx(expected, rel=1e-12)


def test_equal_logits_leave_only_the_weighted_cross_entropy() -> None:
    logits = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = nn.functional.cross_entropy(logits, y)
    assert float(soft_target_kl(logits, logits.clone(), 3.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(distillation_loss(logits, logits.clone(), y, 0.3, 3.0)) == pytest.approx(0.7 * float(ce), rel=1e-12)
    assert torch.equal(distillation_loss(logits, torch.randn(5, 4, dtype=torch.float64), y, 0.0, 3.0), ce)


def test_gradient_reaches_the_student_and_not_the_teacher() -> None:
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0, 1, 2]), 1.0, 4.0).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


def _loop(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Loop:
    return Loop(
        Batches(x, y, batch_size, shuffle=True), Batches(x, y, 64, shuffle=False), torch.device("cpu"), progress=False
    )


def _kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(soft_target_kl(student(x), teacher(x), 1.0))


def test_fit_with_a_teacher_moves_the_student_towards_it() -> None:
    """The labels contradict the teacher, so only distillation (weight 1) can bring the student closer to it."""
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        teacher.weight.mul_(3)
        y = (teacher(x).argmax(1) + 1) % 3
    teacher.train()
    before_kl, before_teacher = _kl(teacher, student, x), {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = FinetuneConfig(epochs=5, batch_size=16, lr=0.05, distill=DistillConfig(weight=1.0, temperature=2.0))
    fit(student, _loop(x, y, 16), cfg, teacher=teacher, distill=cfg.distill)
    assert _kl(teacher, student, x) < 0.3 * before_kl
    assert teacher.training and next(teacher.parameters()).device.type == "cpu"
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())


def test_the_logged_task_loss_stays_the_cross_entropy() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(student(x), y))  # one batch: the loss logged is before its step
    cfg = FinetuneConfig(epochs=1, batch_size=32, distill=DistillConfig(weight=0.9))
    (log,) = fit(student, _loop(x, y, 32), cfg, teacher=teacher, distill=cfg.distill)
    assert log.task_loss == pytest.approx(ce, rel=1e-6)


def test_a_checkpoint_saved_before_distill_existed_still_resumes(tmp_path: Path) -> None:
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))

    def _start() -> nn.Module:  # the same starting weights each time: a checkpoint resumes only its own input
        torch.manual_seed(1)
        return nn.Linear(4, 3)

    ckpt = tmp_path / "ft.ckpt"
    fit(_start(), _loop(x, y, 16), FinetuneConfig(epochs=1, batch_size=16), stage="finetune", checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    del state["config"]["distill"]
    save_checkpoint(ckpt, state)
    history = fit(_start(), _loop(x, y, 16), FinetuneConfig(epochs=2, batch_size=16), stage="finetune", checkpoint=ckpt)
    assert [h.epoch for h in history] == [1, 2]
    state["config"]["distill"] = {"weight": 0.0}  # a nested setting added since: its default
    save_checkpoint(ckpt, state)
    fit(_start(), _loop(x, y, 16), FinetuneConfig(epochs=1, batch_size=16), stage="finetune", checkpoint=ckpt)
    wanted = FinetuneConfig(epochs=2, batch_size=16, distill=DistillConfig(weight=0.5))
    with pytest.raises(DeepKMeansError, match="other settings.*distill"):
        fit(_start(), _loop(x, y, 16), wanted, stage="finetune", checkpoint=ckpt)


def test_retrain_distils_a_frozen_copy_of_the_model_before_retraining(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_fit(model: nn.Module, loop: Loop, cfg: RetrainConfig, **kwargs: object) -> list:
        seen.update(kwargs)
        with torch.no_grad():
            model.weight.add_(1.0)  # re-training changes the model in place; the teacher must not follow
        return []

    monkeypatch.setattr(stages, "fit", fake_fit)
    model = nn.Linear(4, 3)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    session = stages.Session(Rank(), _loop(x, y, 16))
    distill = DistillConfig(weight=0.5, temperature=2)
    cfg = RunConfig(retrain=RetrainConfig(epochs=1, batch_size=16, lam=1.0, distill=distill))
    stages.retrain(cfg, model, session, Path("unused.ckpt"), {})
    teacher = seen["teacher"]
    assert isinstance(teacher, nn.Module) and teacher is not model and not teacher.training
    assert all(torch.equal(dense[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert seen["distill"] == DistillConfig(0.5, 2.0)
    seen.clear()
    plain = RunConfig(retrain=RetrainConfig(epochs=1, batch_size=16, lam=1.0))
    stages.retrain(plain, model, session, Path("u.ckpt"), {})
    assert seen["teacher"] is None


def test_finetuning_with_distillation_needs_the_dense_model(tmp_path: Path) -> None:
    cfg = RunConfig(finetune=FinetuneConfig(epochs=1, distill=DistillConfig(weight=0.5)))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(DeepKMeansError, match="needs a teacher"):
        stages.finetune(cfg, nn.Linear(4, 3), _loop(x, y, 8), tmp_path / "ft.ckpt", {})
    with pytest.raises(DeepKMeansError, match="needs the dense checkpoint.*deepkmeans run"):
        finetune_file(tmp_path / "m.dkm", cfg, tmp_path / "out.dkm")


def test_distill_config_round_trips_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("retrain: {distill: {weight: 0.5, temperature: 4}}\nfinetune: {distill: {weight: 1}}")
    cfg = load_config(path)
    assert cfg.retrain.distill == DistillConfig(0.5, 4.0) and cfg.finetune.distill == DistillConfig(1.0, 4.0)
    assert cfg.train == RunConfig().train and not hasattr(cfg.train, "distill")
    assert to_dict(from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))) == to_dict(cfg)
    assert to_dict(RunConfig())["retrain"]["distill"] == {"weight": 0.0, "temperature": 4.0}


@pytest.mark.parametrize(
    "text,match",
    [
        ("retrain: {distill: {weight: 1.5}}", r"retrain\.distill\.weight must be a number in \[0, 1\], got 1.5"),
        ("retrain: {distill: {weight: -0.1}}", r"retrain\.distill\.weight must be"),
        ("finetune: {distill: {temperature: 0}}", r"finetune\.distill\.temperature must be a finite number > 0, got 0"),
        ("finetune: {distill: {temperature: hot}}", r"finetune\.distill\.temperature: expected a number"),
        ("finetune: {distill: {alpha: 1}}", r"finetune\.distill: unknown key\(s\) alpha"),
        ("train: {distill: {weight: 0.5}}", r"train: unknown key\(s\) distill"),
    ],
)
def test_bad_distill_values_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_distill_built_in_python_is_validated() -> None:
    with pytest.raises(ConfigError, match="distill must be a DistillConfig"):
        RetrainConfig(distill={"weight": 0.5})
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        DistillConfig(temperature=-1.0)
