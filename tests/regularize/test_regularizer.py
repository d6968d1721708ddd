import pytest
import torch
from torch import nn

from deepkmeans import CompressConfig, DeepKMeans, LayerSpec, RegularizerConfig
from deepkmeans.cluster.quantize import cluster_rows, refine_rows
from deepkmeans.cluster.rows import to_rows
from deepkmeans.plan import layer_seed
from deepkmeans.regularize.penalty import kmeans_penalty


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3)
        self.fc = nn.Linear(20, 4)


def _dkm(net: nn.Module, layers: dict, method: str = "kmeans", seed: int = 0, **reg: float) -> DeepKMeans:
    return DeepKMeans(net, CompressConfig(layers=layers, seed=seed), RegularizerConfig(method, **reg))


def test_kmeans_penalty_uses_compression_clustering_and_lam() -> None:
    net = TinyNet()
    dkm = _dkm(net, {"conv": LayerSpec(4, 0.5), "fc": LayerSpec(3, d=5)}, lam=0.3, seed=2)
    rows = to_rows(net.conv.weight.detach(), 3)
    expected = cluster_rows(rows, 4, 0.5, seed=layer_seed(2, "conv")).assignments
    assert torch.equal(dkm.assignments["conv"].long(), expected)
    terms = dkm.layer_penalties()
    assert float(terms["conv"].detach()) == pytest.approx(float(kmeans_penalty(rows, expected, 4)))
    assert float(dkm.penalty().detach()) == pytest.approx(0.15 * float(sum(terms.values()).detach()))


def test_refresh_every_t_steps() -> None:
    net = TinyNet()
    dkm = _dkm(net, {"conv": LayerSpec(4)}, lam=1.0, refresh_every=3)
    before = dkm.assignments["conv"].clone()
    with torch.no_grad():
        net.conv.weight.mul_(-1.0).add_(torch.randn_like(net.conv.weight))
    dkm.step()
    dkm.step()
    assert torch.equal(dkm.assignments["conv"], before)  # F fixed between refreshes
    dkm.step()
    rows = to_rows(net.conv.weight.detach(), 3)
    # later refreshes continue Lloyd from the previous F
    assert torch.equal(dkm.assignments["conv"].long(), refine_rows(rows, before, 4).assignments)
    assert not torch.equal(dkm.assignments["conv"], before)


def test_spectral_warns_once_per_layer_when_k_ge_d() -> None:
    net = TinyNet()
    with pytest.warns(UserWarning, match="layer conv: spectral penalty is identically zero"):
        dkm = _dkm(net, {"conv": LayerSpec(4), "fc": LayerSpec(2, d=5)}, "spectral", lam=1.0)
    assert set(dkm.layer_penalties()) == {"fc"}
    assert float(dkm.penalty().detach()) > 0


def test_descent_on_penalty_alone_makes_assignments_harder() -> None:
    """Gradient steps on (lam/2) R alone shrink the within-cluster spread (hardness falls)."""
    torch.manual_seed(0)
    net = TinyNet()
    dkm = _dkm(net, {"conv": LayerSpec(6)}, lam=1.0, refresh_every=5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first = float(dkm.penalty().detach())
    hardness0 = dkm.report()[0].hardness
    for _ in range(20):
        opt.zero_grad()
        dkm.penalty().backward()
        opt.step()
        dkm.step()
    assert float(dkm.penalty().detach()) < 0.2 * first
    assert dkm.report()[0].hardness < 0.5 * hardness0


@pytest.mark.parametrize("method", ["kmeans", "spectral"])
def test_gradient_mode_updates_like_the_loss_mode(method: str) -> None:
    """apply='gradient' adds lam * (W - W F F^T) to .grad at backward: the same steps as the autograd penalty
    (for weights the loss uses: a weight that gets no gradient gets no hook call)."""
    torch.manual_seed(0)
    nets = [TinyNet(), TinyNet()]
    nets[1].load_state_dict(nets[0].state_dict())
    layers = {"conv": LayerSpec(4, 0.5), "fc": LayerSpec(2, d=5)}
    dkms = [
        _dkm(net, layers, method, lam=0.7, refresh_every=3, apply=apply)
        for net, apply in zip(nets, ("loss", "gradient"), strict=True)
    ]
    opts = [torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) for net in nets]
    x, images = torch.randn(8, 20), torch.randn(8, 2, 5, 5)
    for _ in range(7):
        values = []
        for net, dkm, opt in zip(nets, dkms, opts, strict=True):
            loss = net.fc(x).square().mean() + net.conv(images).square().mean()
            if dkm.in_loss:
                loss = loss + dkm.penalty()
            values.append(float(dkm.penalty().detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            dkm.step()
        assert values[1] == pytest.approx(values[0], rel=1e-5) and values[0] > 0
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
