"""Gradual hardness: lam and sparsity p rise linearly over the first ramp_steps of re-training."""

import pytest
import torch
from torch import nn

from deepkmeans import CompressConfig, DeepKMeans, LayerSpec, RegularizerConfig
from deepkmeans.cluster.quantize import cluster_rows, sparse_count
from deepkmeans.cluster.rows import to_rows
from deepkmeans.config import RetrainConfig
from deepkmeans.plan import layer_seed


def _dkm(ramp_steps: int, refresh_every: int = 2) -> tuple[nn.Module, DeepKMeans]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 10))
    reg = RegularizerConfig("kmeans", lam=2.0, refresh_every=refresh_every, ramp_steps=ramp_steps)
    return net, DeepKMeans(net, CompressConfig(layers={"0": LayerSpec(K=8, p=0.8, d=4)}), reg)


def _dominant(dkm: DeepKMeans) -> int:
    assignments = dkm.assignments["0"].long()
    return int((assignments == 0).sum())


def test_lam_and_p_ramp_linearly_then_hold() -> None:
    _, dkm = _dkm(ramp_steps=8)
    rows = 100  # 10 x 40 weights in rows of 4
    assert float(dkm.penalty().detach()) == 0.0  # lam * 0 at step 0, and p = 0: plain k-means
    assert _dominant(dkm) < sparse_count(rows, 0.8)
    terms = {}
    for step in range(1, 13):
        dkm.step()
        terms[step] = float(sum(dkm.layer_penalties().values()).detach()), float(dkm.penalty().detach())
        if step % 2 == 0:  # a refresh: p is 0.8 * min(1, step / 8) now
            want = sparse_count(rows, 0.8 * min(1.0, step / 8))
            assert _dominant(dkm) >= want
    for step, (r, value) in terms.items():
        assert value == pytest.approx(0.5 * 2.0 * min(1.0, step / 8) * r, rel=1e-6)
    assert _dominant(dkm) >= sparse_count(rows, 0.8)


def test_the_refresh_that_first_splits_off_the_dominant_cluster_runs_kmeans_again() -> None:
    net, dkm = _dkm(ramp_steps=8)
    with torch.no_grad():
        net[0].weight.add_(0.1 * torch.randn_like(net[0].weight))
    dkm.step()
    dkm.step()  # refresh at step 2: p goes from 0 to 0.2, a dominant cluster appears
    rows = to_rows(net[0].weight.detach(), 4)
    cold = cluster_rows(rows, 8, 0.8 * 2 / 8, seed=layer_seed(0, "0")).assignments
    assert torch.equal(dkm.assignments["0"].long(), cold)


def test_no_ramp_is_the_full_penalty_from_the_start() -> None:
    _, dkm = _dkm(ramp_steps=0)
    r = float(sum(dkm.layer_penalties().values()).detach())
    assert float(dkm.penalty().detach()) == pytest.approx(r)  # lam / 2 = 1
    assert _dominant(dkm) >= sparse_count(100, 0.8)


def test_retrain_ramp_fraction_becomes_steps() -> None:
    cfg = RetrainConfig(epochs=10, ramp=0.25, lam=1.0)
    assert cfg.regularizer_for(40).ramp_steps == 100  # a quarter of 10 epochs x 40 steps
    assert cfg.regularizer.ramp_steps == 0
    with pytest.raises(Exception, match="ramp"):
        RetrainConfig(ramp=1.5)


def test_resumed_ramp_warm_starts_like_the_uninterrupted_one() -> None:
    net, dkm = _dkm(ramp_steps=8)
    for _ in range(5):
        dkm.step()
    state = dkm.state_dict()
    for _ in range(3):
        dkm.step()
    _, resumed = _dkm(ramp_steps=8)
    resumed.model.load_state_dict(net.state_dict())
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.step()
    assert torch.equal(resumed.assignments["0"], dkm.assignments["0"])
