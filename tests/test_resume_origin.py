"""A checkpoint at the output path is resumed only when it continues the same input: the same starting weights,
data, teacher and plan. Any other input is refused in one line (exit 2), never silently replaced by the old run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from deepkmeans.cli import main
from deepkmeans.data import Batches
from deepkmeans.files.checkpoints import load_checkpoint, save_checkpoint
from deepkmeans.models import build_model
from deepkmeans.train import origin_digest

LAYERS = "compress: {{layers: {{conv1: {{K: 4}}, conv2: {{K: {k}}}}}}}\n"


def _config(tmp_path: Path, mnist_dir: Path, name: str, seed: int = 0, model: str = "lenet5_caffe", k: int = 8) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"data_dir: {mnist_dir}\ndevice: cpu\nseed: {seed}\nmodel: {model}\n"
        "train: {epochs: 1, batch_size: 64, lr: 0.05}\n"
        "retrain: {epochs: 1, batch_size: 64, lam: 0.01, refresh_every: 5}\n"
        "finetune: {epochs: 1, batch_size: 64}\n" + LAYERS.format(k=k)
    )
    return cfg


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepkmeans: error:") and len(err.strip().splitlines()) == 1, err
    return err


def _state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_checkpoint(path)["model"].items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_refuses_another_seed_or_architecture(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "dense.ckpt"
    assert main(["train", "--config", str(_config(tmp_path, mnist_dir, "s0")), "-o", str(ckpt)]) == 0
    before = _state(ckpt)
    err = _refused(capsys, ["train", "--config", str(_config(tmp_path, mnist_dir, "s1", seed=1)), "-o", str(ckpt)])
    assert "another input" in err and str(ckpt) in err
    lenet300 = _config(tmp_path, mnist_dir, "l300", model="lenet300_100")
    assert "another input" in _refused(capsys, ["train", "--config", str(lenet300), "-o", str(ckpt)])
    assert _same(before, _state(ckpt))  # the refused runs left the checkpoint as it was
    # the same input still resumes: nothing left to train, nothing changed
    assert main(["train", "--config", str(_config(tmp_path, mnist_dir, "s0")), "-o", str(ckpt)]) == 0
    assert "epoch" not in capsys.readouterr().out and _same(before, _state(ckpt))


def test_retrain_refuses_another_checkpoint_or_plan(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg0, cfg1 = _config(tmp_path, mnist_dir, "s0"), _config(tmp_path, mnist_dir, "s1", seed=1)
    d0, d1, out = tmp_path / "d0.ckpt", tmp_path / "d1.ckpt", tmp_path / "r.ckpt"
    assert main(["train", "--config", str(cfg0), "-o", str(d0)]) == 0
    assert main(["train", "--config", str(cfg1), "-o", str(d1)]) == 0
    assert main(["retrain", str(d0), "--config", str(cfg0), "-o", str(out)]) == 0
    retrained = _state(out)
    assert "another input" in _refused(capsys, ["retrain", str(d1), "--config", str(cfg0), "-o", str(out)])
    other_plan = _config(tmp_path, mnist_dir, "k16", k=16)  # the penalty would pull towards other centers
    assert "another input" in _refused(capsys, ["retrain", str(d0), "--config", str(other_plan), "-o", str(out)])
    assert _same(retrained, _state(out))
    assert main(["retrain", str(d0), "--config", str(cfg0), "-o", str(out)]) == 0  # the same input resumes
    assert _same(retrained, _state(out))


def test_finetune_refuses_another_file(tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg0, cfg1 = _config(tmp_path, mnist_dir, "s0"), _config(tmp_path, mnist_dir, "s1", seed=1)
    for name, cfg in (("a", cfg0), ("b", cfg1)):
        assert main(["train", "--config", str(cfg), "-o", str(tmp_path / f"{name}.ckpt")]) == 0
        assert (
            main(
                ["compress", str(tmp_path / f"{name}.ckpt"), "--config", str(cfg), "-o", str(tmp_path / f"{name}.dkm")]
            )
            == 0
        )
    out = tmp_path / "ft.dkm"
    assert main(["finetune", str(tmp_path / "a.dkm"), "--config", str(cfg0), "-o", str(out)]) == 0
    written = out.read_bytes()
    err = _refused(capsys, ["finetune", str(tmp_path / "b.dkm"), "--config", str(cfg0), "-o", str(out)])
    assert "another input" in err
    assert out.read_bytes() == written  # A's fine-tuned file stays; B's is not silently A's


def test_checkpoint_without_origin_is_not_resumed(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, ckpt = _config(tmp_path, mnist_dir, "s0"), tmp_path / "old.ckpt"
    assert main(["train", "--config", str(cfg), "-o", str(ckpt)]) == 0
    state = load_checkpoint(ckpt)
    del state["origin"]  # as written before checkpoints recorded their input
    save_checkpoint(ckpt, state)
    assert "does not record which input" in _refused(capsys, ["train", "--config", str(cfg), "-o", str(ckpt)])


def test_origin_digest_sees_every_input() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300_100")
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    data = Batches(x, y, 16, shuffle=True, seed=0)
    base = origin_digest(model, data, {"plan": 1})
    assert origin_digest(model, Batches(x.clone(), y.clone(), 8, True, 0), {"plan": 1}) == base  # same content
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        weight = next(nudged.parameters())
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(1.0))  # one weight, one ulp
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1
    others = [
        origin_digest(nudged, data, {"plan": 1}),
        origin_digest(model, Batches(x2, y, 16, True, 0), {"plan": 1}),
        origin_digest(model, Batches(x, y, 16, True, 1), {"plan": 1}),  # another shuffle seed
        origin_digest(model, data, {"plan": 2}),
        origin_digest(model, data, {"plan": 1}, teacher=nudged),
        origin_digest(model.half(), data, {"plan": 1}),  # same values, another dtype
    ]
    assert base not in others and len(set(others)) == len(others)
