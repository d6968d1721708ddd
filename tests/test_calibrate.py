"""BatchNorm re-estimation after compression: it changes the running statistics to those of the data, and
nothing else; the run wires it in and says when there is nothing to re-estimate."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from deepkmeans.calibrate import batchnorm_layers, reestimate_batchnorm_
from deepkmeans.config import CompressConfig, LayerSpec, RunConfig
from deepkmeans.data import Batches
from deepkmeans.errors import ConfigError, DeepKMeansError, PlanWarning
from deepkmeans.job import stages
from deepkmeans.train import Loop


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _batches(n: int = 96, batch_size: int = 32) -> tuple[torch.Tensor, Batches]:
    torch.manual_seed(1)
    x = 3.0 * torch.randn(n, 6) + 2.0
    return x, Batches(x, torch.zeros(n, dtype=torch.int64), batch_size, shuffle=False)


def test_running_statistics_become_those_of_the_data() -> None:
    model, (x, batches) = _net(), _batches()
    assert reestimate_batchnorm_(model, batches, torch.device("cpu"), max_batches=3) == 1
    bn = model[2]
    with torch.no_grad():
        h = model[1](x)
    # the cumulative average over 3 equal batches: the mean of the batch means, of the unbiased batch variances
    means = torch.stack([h[i : i + 32].mean(0) for i in range(0, 96, 32)])
    variances = torch.stack([h[i : i + 32].var(0, unbiased=True) for i in range(0, 96, 32)])
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3


def test_only_the_first_max_batches_count() -> None:
    model, (x, batches) = _net(), _batches()
    reestimate_batchnorm_(model, batches, torch.device("cpu"), max_batches=1)
    with torch.no_grad():
        h = model[1](x[:32])
    torch.testing.assert_close(model[2].running_mean, h.mean(0), rtol=1e-5, atol=1e-5)


def test_nothing_else_changes() -> None:
    model, (_, batches) = _net(), _batches()
    model.train()
    model[0].eval()  # a mixed set of modes must come back as it was
    modes = [m.training for m in model.modules()]
    momentum = model[2].momentum
    before = copy.deepcopy(model.state_dict())
    reestimate_batchnorm_(model, batches, torch.device("cpu"), max_batches=2)
    after = model.state_dict()
    stats = {"2.running_mean", "2.running_var", "2.num_batches_tracked"}
    assert all(torch.equal(before[k], after[k]) for k in before if k not in stats)
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    assert [m.training for m in model.modules()] == modes and model[2].momentum == momentum
    assert all(p.grad is None for p in model.parameters())


def test_dropout_is_off_while_measuring() -> None:
    """With dropout on, the statistics would depend on the random mask; they must equal a run without it."""
    model, (_, batches) = _net(), _batches()
    reference = copy.deepcopy(model)
    reference[0] = nn.Identity()
    torch.manual_seed(5)
    reestimate_batchnorm_(model, batches, torch.device("cpu"), max_batches=3)
    reestimate_batchnorm_(reference, batches, torch.device("cpu"), max_batches=3)
    torch.testing.assert_close(model[2].running_var, reference[2].running_var)


def test_a_failure_part_way_restores_the_old_statistics() -> None:
    model, (_, batches) = _net(), _batches()
    before = model[2].running_mean.clone()

    def broken():
        x, y = next(iter(batches))
        yield x, y
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError, match="reader failed"):
        reestimate_batchnorm_(model, broken(), torch.device("cpu"), max_batches=3)
    assert torch.equal(model[2].running_mean, before) and model[2].momentum == 0.1


def test_no_batchnorm_and_bad_arguments() -> None:
    model, (_, batches) = nn.Sequential(nn.Linear(6, 3)), _batches()
    assert batchnorm_layers(model) == [] and reestimate_batchnorm_(model, batches, torch.device("cpu"), 2) == 0
    with pytest.raises(ConfigError, match="max_batches must be an integer >= 1"):
        reestimate_batchnorm_(_net(), batches, torch.device("cpu"), 0)
    with pytest.raises(DeepKMeansError, match="no batches"):
        reestimate_batchnorm_(_net(), [], torch.device("cpu"), 2)


def _loop(batches: Batches) -> Loop:
    return Loop(batches, batches, torch.device("cpu"), progress=False)


def test_compress_and_measure_reestimates_and_warns_without_batchnorm(tmp_path) -> None:
    _, batches = _batches()
    layers = {"1": LayerSpec(K=2), "4": LayerSpec(K=2)}
    cfg = RunConfig(bn_reestimate=2, compress=CompressConfig(layers=layers))
    model = _net()
    shared, _ = stages.compress_and_measure(model, cfg, _loop(batches), tmp_path / "a.dkm", {})
    plain, _ = stages.compress_and_measure(
        model, RunConfig(compress=cfg.compress), _loop(batches), tmp_path / "b.dkm", {}
    )
    assert torch.equal(plain[2].running_mean, model[2].running_mean)  # off: the dense model's statistics
    assert not torch.equal(shared[2].running_mean, model[2].running_mean)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flat = nn.Sequential(nn.Linear(6, 3))
        stages.compress_and_measure(
            flat,
            RunConfig(bn_reestimate=2, compress=CompressConfig(layers={"0": LayerSpec(K=2)})),
            _loop(batches),
            tmp_path / "c.dkm",
            {},
        )
    assert any(issubclass(w.category, PlanWarning) and "no BatchNorm" in str(w.message) for w in caught)
