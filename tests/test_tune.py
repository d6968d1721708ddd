"""deepkmeans tune: per-layer K / p / d for a target on validation data; center fine-tuning keeps the file size."""

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import deepkmeans.tuning as tune_module
from deepkmeans.accounting import account
from deepkmeans.cli import main
from deepkmeans.config import CompressConfig, LayerSpec, load_config
from deepkmeans.data import Batches, load_splits
from deepkmeans.errors import ConfigError, DeepKMeansError, PlanWarning
from deepkmeans.files.checkpoints import load_checkpoint
from deepkmeans.files.models import load_compressed, load_model_file
from deepkmeans.lifecycle import compress
from deepkmeans.results import RunFiles, RunMetrics
from deepkmeans.train import evaluate
from deepkmeans.tuning import Candidate, Grid, allocate, linear_row_lengths, tune
from tests.conftest import make_mnist_dir
from tests.test_cli import _config


def _tiny() -> tuple[nn.Module, Batches]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 5))
    x = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, Batches(x, model(x).argmax(1).detach(), 48, False)


@pytest.mark.parametrize("target", [6.0, 12.0])
def test_tuner_meets_a_size_target(target: float) -> None:
    model, val = _tiny()
    result = tune(model, val, torch.device("cpu"), target_cr=target, progress=False)
    assert result.paper_cr >= target
    assert set(result.chosen) == {"0", "3"} and set(result.config.layers) == {"0", "3"}
    assert {c.spec.d for c in result.candidates["3"] if c.spec} == {1, 2, 4, 9, 18}  # d: divisors of 216 near the grid
    assert result.dense_val_acc == 1.0 and 0 <= result.val_acc <= 1


def test_tuner_keeps_within_an_accuracy_drop() -> None:
    model, val = _tiny()
    # full-width candidates only: on this random toy the lowest-loss 8-bit candidate loses 13 points of accuracy
    # at every size (the allocation minimizes loss, not errors), so no size would hold the drop
    result = tune(model, val, torch.device("cpu"), max_drop=5.0, progress=False, grid=Grid(widths=(32,)))
    assert 100 * (result.dense_val_acc - result.val_acc) <= 5.0 and result.paper_cr > 1.5


def test_linear_row_lengths_are_divisors_near_the_grid() -> None:
    assert linear_row_lengths(800) == [1, 2, 5, 10, 20]  # LeNet-5 fc1
    assert linear_row_lengths(784) == [1, 2, 4, 8, 16]  # LeNet-300-100 fc1: 5, 10 and 20 do not divide it
    assert linear_row_lengths(7) == [1, 7] and linear_row_lengths(1) == [1]


def test_allocation_prefers_cheap_loss() -> None:
    def c(layer: str, bits: float, loss: float) -> Candidate:
        return Candidate(layer, None, bits, loss, 0.0)

    candidates = {"a": [c("a", 100, 0.0), c("a", 10, 0.5)], "b": [c("b", 100, 0.0), c("b", 10, 0.01)]}
    chosen = allocate(candidates, budget=115, dense_loss=0.0)
    assert chosen["a"].bits == 100 and chosen["b"].bits == 10  # spend the bits where they buy most


def test_tune_command_uses_validation_images_only_and_writes_a_config_run_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_mnist_dir(tmp_path / "mnist", n_train=300, n_test=64)
    test_images = data / "t10k-images-idx3-ubyte"
    test_images.write_bytes(test_images.read_bytes()[:16] + bytes(64 * 28 * 28))  # blank: useless for choosing
    config = _config(tmp_path, data)
    config.write_text(config.read_text() + "validation: 100\n")
    assert main(["train", "--config", str(config), "-o", str(tmp_path / "d.ckpt")]) == 0
    assert load_checkpoint(tmp_path / "d.ckpt")["meta"]["validation"] == 100
    out = tmp_path / "tuned.yaml"
    seen: list[int] = []
    real_evaluate = tune_module.evaluate

    def recording_evaluate(model, batches, device):
        seen.append(len(batches.x))
        return real_evaluate(model, batches, device)

    monkeypatch.setattr(tune_module, "evaluate", recording_evaluate)
    argv = ["tune", str(tmp_path / "d.ckpt"), "--config", str(config), "--target-cr", "20", "-o", str(out)]
    assert main(argv) == 0
    assert seen and set(seen) == {100}  # every measurement on the 100 validation images, none on the 64 test ones
    printed = capsys.readouterr().out
    assert "validation: the last 100 training images" in printed and "paper CR" in printed
    table = out.with_suffix(".sensitivity.md").read_text()
    assert all(f"| {n} |" in table for n in ("conv1", "conv2", "fc1", "fc2")) and table.count("**yes**") == 4
    tuned = load_config(out)
    assert tuned.validation == 100 and set(tuned.compress.layers) == {"conv1", "conv2", "fc1", "fc2"}
    assert main(["compress", str(tmp_path / "d.ckpt"), "--config", str(out), "-o", str(tmp_path / "t.dkm")]) == 0
    assert "paper-accounting CR" in capsys.readouterr().out


def test_center_finetuning_keeps_assignments_and_file_size(tmp_path: Path) -> None:
    data = make_mnist_dir(tmp_path / "mnist")
    config = _config(tmp_path, data)
    config.write_text(config.read_text() + "finetune: {epochs: 1, batch_size: 32}\nvalidation: 100\n")
    assert main(["run", str(config), "--no-progress"]) == 0
    run = tmp_path / "run"
    # every model of the run is also measured on the held-out images, the figure settings are chosen by
    metrics = RunMetrics.read(RunFiles(run))
    val = load_splits("mnist", data, 32, validation=100).val
    assert val is not None and len(val.x) == 100
    assert metrics.dense.val_acc is not None and [s.file for s in metrics.stages][-1] == "finetuned.dkm"
    for stage in metrics.stages:
        assert stage.val_acc == evaluate(load_model_file(run / stage.file).model, val, torch.device("cpu"))[1]
    assert "validation accuracy" in (run / "report.md").read_text()
    before, after = load_compressed(run / "model.dkm"), load_compressed(run / "finetuned.dkm")
    assert (run / "model.dkm").stat().st_size == (run / "finetuned.dkm").stat().st_size
    for name, code in before.layers.items():
        assert torch.equal(code.assignments, after.layers[name].assignments)
    assert any(not torch.equal(code.centers, after.layers[n].centers) for n, code in before.layers.items())
    assert main(["finetune", str(run / "model.dkm"), "--data-dir", str(data), "-o", str(tmp_path / "f.dkm")]) == 0
    assert (tmp_path / "f.dkm").stat().st_size == (run / "model.dkm").stat().st_size


def test_candidates_span_widths_and_betas_and_cost_what_they_store() -> None:
    model, val = _tiny()
    grid = Grid(ks=(4,), ps=(0.5,), widths=(32, 8), betas=(0.0, 0.5))
    cands = tune_module.sensitivities(model, val, torch.device("cpu"), layers=["3"], progress=False, grid=grid)["3"]
    shared = {(c.spec.d, c.spec.bits, c.spec.beta): c for c in cands if c.spec is not None}
    assert {bits for _, bits, _ in shared} == {32, 8} and {beta for *_, beta in shared} == {0.0, 0.5}
    for d in (1, 2, 4, 9, 18):
        wide, narrow = shared[(d, 32, 0.0)], shared[(d, 8, 0.0)]
        # same clustering; 4*d centers and the 5 biases drop from 32 to 8 bits, plus two 64-bit grids
        assert wide.bits - narrow.bits == pytest.approx((4 * d + 5) * 24 - 128)
        assert shared[(d, 8, 0.5)].bits <= narrow.bits + 1e-6  # the rate term never costs bits here


def test_allocation_spends_the_bits_the_price_leaves_unused() -> None:
    def c(layer: str, bits: float, loss: float) -> Candidate:
        return Candidate(layer, None, bits, loss, 0.0)

    # No price per bit picks b's 15-bit candidate with a's 10-bit one: below 0.02 both upgrade (45 bits), up to
    # 0.05 a takes 30 (40 bits), above it both stay at 10 (20 bits). 15 bits are left over; b's upgrade fits them.
    candidates = {"a": [c("a", 10, 1.0), c("a", 30, 0.0)], "b": [c("b", 10, 1.0), c("b", 15, 0.9)]}
    chosen = allocate(candidates, budget=35, dense_loss=0.0)
    assert (chosen["a"].bits, chosen["b"].bits) == (10, 15)


def test_budget_holds_the_bits_of_layers_that_are_not_candidates() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    val = Batches(x, model(x).argmax(1).detach(), 32, False)
    grid = Grid(ks=(2, 4, 8), ps=(0.0,), widths=(32,))
    # only the middle layer is a candidate; the other two (272 + 260 of 1,620 parameters) stay dense: a budget
    # that forgot their bits would give the middle layer 21,600 bits and land near 2.3x
    candidates = tune_module.sensitivities(model, val, torch.device("cpu"), layers=["2"], progress=False, grid=grid)
    result = tune(model, val, torch.device("cpu"), target_cr=2.4, progress=False, candidates=candidates)
    assert set(result.chosen) == {"2"} and result.paper_cr >= 2.4


def test_candidates_a_beta_collapses_are_measured_without_a_warning_each() -> None:
    """The collapse warning is for a config the user compresses; tune's trials of a large beta would print one
    line per candidate."""
    model, val = _tiny()
    grid = Grid(ks=(8,), ps=(0.0,), widths=(32,), betas=(5.0,))
    with pytest.warns(PlanWarning, match="beta 5 uses"):  # the same layer compressed on its own says so
        compress(model, CompressConfig(layers={"3": LayerSpec(K=8, d=1, beta=5.0)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanWarning)
        cands = tune_module.sensitivities(model, val, torch.device("cpu"), layers=["3"], progress=False, grid=grid)
    assert len(cands["3"]) == 6  # dense + the five row lengths


def test_the_reachable_ratio_bounds_every_choice_of_the_candidates() -> None:
    """Computed from shapes alone, it is never below what the candidates' measured bits reach."""
    model, val = _tiny()
    for grid in (Grid(ks=(4, 8), ps=(0.0, 0.9), widths=(32, 8)), Grid(ks=(4,), ps=(0.5,), betas=(0.0, 0.1))):
        cands = tune_module.sensitivities(model, val, torch.device("cpu"), progress=False, grid=grid)
        before = account(model).bits_before
        measured = before / sum(min(c.bits for c in layer) for layer in cands.values())
        assert measured <= tune_module.reachable_cr(model, grid) < 2 * measured  # at most H = 0 from p = 0


def test_a_target_beyond_reach_is_refused_before_any_candidate_is_measured(monkeypatch) -> None:
    model, val = _tiny()

    def measured(*args, **kwargs):
        raise AssertionError("a candidate was measured")

    monkeypatch.setattr(tune_module, "sensitivities", measured)
    top = tune_module.reachable_cr(model)
    with pytest.raises(ConfigError, match=rf"candidates reach at most {top:.1f}x on this model"):
        tune(model, val, torch.device("cpu"), target_cr=1.01 * top, progress=False)


def _threshold_attempt(holds_up_to: float, tried: list[float]):
    """A joint check whose accuracy holds (drop 0) up to ``holds_up_to`` and drops 10 points above it."""

    def attempt(cr: float) -> tune_module.JointCheck:
        tried.append(cr)
        return tune_module.JointCheck({}, None, 0.0, 0.9 if cr <= holds_up_to else 0.8, cr)

    return attempt


def test_max_drop_search_bisects_between_the_last_grid_ratio_that_held_and_the_next() -> None:
    # Grid: 1024^(i/12) = 2^(10 i / 12). With the threshold at 2^(70/12 + 0.65 * 10/12), ratios 2^(70/12) (i = 7)
    # and below hold, 2^(80/12) does not. Four geometric bisections between them, in units of 10/12 of an octave
    # above 2^(70/12): 1/2 holds, 3/4 fails, 5/8 holds, 11/16 fails; the answer is 5/8.
    octave = 10 / 12
    tried: list[float] = []
    best = tune_module._largest_within(_threshold_attempt(2 ** (7 * octave + 0.65 * octave), tried), 0.9, 5.0, None)
    assert best.paper_cr == pytest.approx(2 ** (7 * octave + 5 / 8 * octave))
    steps = [math.log2(cr) / octave - 7 for cr in tried[12:]]
    assert steps == pytest.approx([1 / 2, 3 / 4, 5 / 8, 11 / 16])
    assert [math.log2(cr) / octave for cr in tried[:12]] == pytest.approx(list(range(1, 13)))


def test_max_drop_search_takes_the_largest_ratio_that_held_even_above_one_that_failed() -> None:
    # Not monotone: 2^(10/12 * 3) fails but 2^(10/12 * 5) and below it hold; nothing above that. The drop bound is
    # inclusive (a drop of exactly max_drop holds), and a target (here 64) tops the grid instead of 1024.
    octave = 6 / 12
    accs = {3: 0.5, 5: 0.96875}  # a drop of 3.125 points at step 5: exact in binary

    def attempt(cr: float) -> tune_module.JointCheck:
        step = round(math.log2(cr) / octave, 6)
        if step == 7:
            raise DeepKMeansError("nothing fits")
        acc = accs.get(step, 1.0 if step <= 5 else 0.5)
        return tune_module.JointCheck({}, None, 0.0, acc, cr)

    best = tune_module._largest_within(attempt, 1.0, 3.125, 64.0)
    # between step 5 (held, drop 3.125) and step 6 (failed): bisections at 5.5 (fails) 5.25, 5.125, 5.0625 (fail)
    assert best.paper_cr == pytest.approx(2 ** (5 * octave))
    top = tune_module._largest_within(lambda cr: tune_module.JointCheck({}, None, 0.0, 0.9, cr), 0.9, 0.0, 64.0)
    assert top.paper_cr == pytest.approx(64.0)  # the target held: nothing to bisect above it
    with pytest.raises(DeepKMeansError, match="within 1.0 points"):
        tune_module._largest_within(lambda cr: tune_module.JointCheck({}, None, 0.0, 0.5, cr), 0.9, 1.0, 64.0)
