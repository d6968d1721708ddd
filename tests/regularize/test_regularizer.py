import pytest
import torch
from torch import nn

from deepkmeans.cluster.quantize import cluster_rows, refine_rows
from deepkmeans.cluster.rows import to_rows
from deepkmeans.compress import layer_seed
from deepkmeans.config import LayerSpec
from deepkmeans.regularize.penalty import kmeans_penalty
from deepkmeans.regularize.regularizer import KMeansRegularizer


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3)
        self.fc = nn.Linear(20, 4)


def test_kmeans_regularizer_uses_compression_clustering_and_lam() -> None:
    net = TinyNet()
    reg = KMeansRegularizer(net, {"conv": LayerSpec(4, 0.5), "fc": LayerSpec(3, d=5)}, "kmeans", lam=0.3, seed=2)
    rows = to_rows(net.conv.weight.detach(), 3)
    expected = cluster_rows(rows, 4, 0.5, seed=layer_seed(2, "conv")).assignments
    assert torch.equal(reg.state["conv"], expected)
    terms = reg.layer_penalties()
    assert float(terms["conv"].detach()) == pytest.approx(float(kmeans_penalty(rows, expected, 4)))
    assert float(reg.penalty().detach()) == pytest.approx(0.15 * float(sum(terms.values()).detach()))


def test_refresh_every_t_steps() -> None:
    net = TinyNet()
    reg = KMeansRegularizer(net, {"conv": LayerSpec(4)}, "kmeans", refresh_every=3)
    before = reg.state["conv"].clone()
    with torch.no_grad():
        net.conv.weight.mul_(-1.0).add_(torch.randn_like(net.conv.weight))
    reg.step()
    reg.step()
    assert torch.equal(reg.state["conv"], before)  # F fixed between refreshes
    reg.step()
    rows = to_rows(net.conv.weight.detach(), 3)
    # later refreshes continue Lloyd from the previous F
    assert torch.equal(reg.state["conv"], refine_rows(rows, before, 4).assignments)
    assert not torch.equal(reg.state["conv"], before)


def test_spectral_warns_once_per_layer_when_k_ge_d() -> None:
    net = TinyNet()
    with pytest.warns(UserWarning, match="layer conv: spectral penalty is identically zero"):
        reg = KMeansRegularizer(net, {"conv": LayerSpec(4), "fc": LayerSpec(2, d=5)}, "spectral")
    assert reg.inactive == ["conv"]
    assert set(reg.layer_penalties()) == {"fc"}
    assert float(reg.penalty().detach()) > 0


def test_descent_on_penalty_alone_makes_assignments_harder() -> None:
    """Gradient steps on (lam/2) R alone shrink the within-cluster spread (hardness falls)."""
    torch.manual_seed(0)
    net = TinyNet()
    reg = KMeansRegularizer(net, {"conv": LayerSpec(6)}, "kmeans", lam=1.0, refresh_every=5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first = float(reg.penalty().detach())
    for _ in range(20):
        opt.zero_grad()
        reg.penalty().backward()
        opt.step()
        reg.step()
    assert float(reg.penalty().detach()) < 0.2 * first


def test_state_dict_roundtrip() -> None:
    net = TinyNet()
    reg = KMeansRegularizer(net, {"conv": LayerSpec(4)}, "kmeans", refresh_every=2)
    reg.step()
    other = KMeansRegularizer(net, {"conv": LayerSpec(4)}, "kmeans", refresh_every=2)
    other.load_state_dict(reg.state_dict())
    assert other.steps == 1 and torch.equal(other.state["conv"], reg.state["conv"])
