"""The lifecycle object on a model the tool does not ship: plan, re-train in the user's loop, report, finalize."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans import (
    CompressConfig,
    DeepKMeans,
    LayerSpec,
    RegularizerConfig,
    build_plan,
    compress,
    load,
    save,
    shared_layers,
)
from deepkmeans.errors import ConfigError, DeepKMeansError, FormatError, PlanWarning


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, 3, 8, 8, generator=gen), torch.randint(0, 5, (32,), generator=gen)


def test_layer_selection_by_name_pattern_type_and_none() -> None:
    model = TinyResNet()
    plan = build_plan(
        model,
        CompressConfig(
            layers={
                "stem": LayerSpec(4),
                "blocks.0.conv2": None,
                "blocks.*.shortcut": LayerSpec(2, d=1),
                "type:Conv2d": LayerSpec(8, 0.5),
                "type:Linear": LayerSpec(4, d=4),
            }
        ),
    )
    shared = plan.shared
    assert shared["stem"].spec.K == 4
    assert shared["blocks.1.shortcut"].spec.K == 2 and shared["blocks.1.shortcut"].spec.d == 1
    assert shared["blocks.1.conv2"].spec.K == 8 and shared["blocks.1.conv2"].spec.p == 0.5
    assert shared["head"].spec.d == 4
    assert "blocks.0.conv2" not in shared and not plan["blocks.0.conv2"].why_dense  # asked dense: no note
    assert [pl.name for pl in plan.layers] == [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with pytest.raises(ConfigError, match="matches no layer"):
        build_plan(model, CompressConfig(layers={"blocks.9.*": LayerSpec(4)}))
    with pytest.raises(ConfigError, match="does not divide"):
        build_plan(model, CompressConfig(layers={"head": LayerSpec(4, d=3)}))
    with pytest.raises(ConfigError, match="BatchNorm2d is not a shareable layer"):
        build_plan(model, CompressConfig(layers={"blocks.0.bn1": LayerSpec(4)}))


def test_retrain_in_own_loop_then_finalize_save_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    config = CompressConfig(layers={"type:Conv2d": LayerSpec(6, 0.3), "head": LayerSpec(4, d=4)}, seed=5)
    dkm = DeepKMeans(model, config, RegularizerConfig("kmeans", lam=1.0, refresh_every=5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _data()
    first = float(dkm.penalty().detach())
    hardness0 = {r.name: r.hardness for r in dkm.report()}
    for _ in range(30):  # the user's own training loop with the callable penalty
        loss = nn.functional.cross_entropy(model(x), y) + dkm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        dkm.step()
    assert float(dkm.penalty().detach()) < first
    report = dkm.report()
    assert [r.name for r in report] == list(dkm.plan.shared)
    assert sum(r.hardness for r in report) < sum(hardness0.values())  # harder assignments
    assert all(
        r.account.K == (4 if r.name == "head" else 6) and r.account.bits_after < r.account.bits_before for r in report
    )

    before = {k: v.clone() for k, v in model.state_dict().items()}
    compressed = dkm.finalize()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy by default
    path = tmp_path / "tiny.dkm"
    save(compressed, path)
    compressed.eval()
    restored = load(path, model=TinyResNet()).eval()
    assert torch.equal(restored(x), compressed(x))
    for name in ("stem", "blocks.0.conv1", "blocks.1.shortcut"):
        weight = dict(restored.named_modules())[name].weight
        assert len(torch.unique(weight.reshape(-1, weight.shape[-1]), dim=0)) <= 6
    with pytest.raises(FormatError, match="names no built-in architecture"):
        load(path)
    with pytest.raises(FormatError, match="do not fit the model"):
        load(path, model=nn.Sequential(nn.Linear(3, 3)))


def test_one_seed_drives_penalty_and_compression() -> None:
    """The penalty's first F is the very clustering finalize() stores: the config's seed is passed once."""
    torch.manual_seed(1)
    model = TinyResNet()
    config = CompressConfig(layers={"type:Conv2d": LayerSpec(5, 0.2)}, seed=5)
    dkm = DeepKMeans(model, config, RegularizerConfig("kmeans", lam=0.1))
    compressed = dkm.finalize()
    for name, layer in shared_layers(compressed).items():
        assert torch.equal(layer.assignments.long(), dkm.assignments[name].long()), name
    other_seed = compress(model, CompressConfig(layers=config.layers, seed=6))
    assert any(
        not torch.equal(a.assignments, b.assignments)
        for a, b in zip(shared_layers(compressed).values(), shared_layers(other_seed).values(), strict=True)
    )


@pytest.mark.parametrize("path", ["auto", "exact", "fast"])
def test_the_kmeans_key_chooses_the_path_per_layer(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """``kmeans: fast|exact|auto`` reaches k-means for the penalty's first F and for compression alike; 'auto'
    takes the fast path from FAST_MIN_ROWS rows (lowered here: stem has 72 rows of length 3, conv1 of
    blocks.0 192)."""
    from deepkmeans import plan as plan_module
    from deepkmeans.cluster import quantize

    monkeypatch.setattr(plan_module, "FAST_MIN_ROWS", 100)
    calls: dict[int, list[bool]] = {}
    real = quantize.kmeans

    def spy(rows, k, **kwargs):
        calls.setdefault(rows.shape[0], []).append(kwargs.get("fast", False))
        return real(rows, k, **kwargs)

    monkeypatch.setattr(quantize, "kmeans", spy)
    torch.manual_seed(0)
    config = CompressConfig(layers={"stem": LayerSpec(4, kmeans=path), "blocks.0.conv1": LayerSpec(4, kmeans=path)})
    dkm = DeepKMeans(TinyResNet(), config, RegularizerConfig("kmeans", lam=0.1))
    assert {name: pl.spec.kmeans for name, pl in dkm.plan.shared.items()} == {
        "stem": "fast" if path == "fast" else "exact",
        "blocks.0.conv1": "exact" if path == "exact" else "fast",
    }
    dkm.finalize()
    assert calls[72] and set(calls[72]) == {path == "fast"}
    assert calls[192] and set(calls[192]) == {path != "exact"}


def test_penalty_is_zero_without_regularizer_and_finalize_inplace_closes() -> None:
    model = TinyResNet()
    for regularizer in (None, RegularizerConfig("none")):
        dkm = DeepKMeans(model, CompressConfig(layers={"stem": LayerSpec(4)}), regularizer)
        assert dkm.penalty().shape == () and float(dkm.penalty()) == 0.0 and not dkm.active
    dkm = DeepKMeans(model, CompressConfig(layers={"stem": LayerSpec(4)}), RegularizerConfig(lam=1.0))
    assert float(dkm.penalty().detach()) > 0
    assert dkm.finalize(inplace=True) is model and "stem" in shared_layers(model)
    with pytest.raises(DeepKMeansError, match="finalized in place"):
        dkm.step()


def test_state_dict_restores_saved_clustering() -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    config, reg = CompressConfig(layers={"type:Conv2d": LayerSpec(4)}), RegularizerConfig(lam=1.0, refresh_every=2)
    dkm = DeepKMeans(model, config, reg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    dkm.step()
    dkm.step()  # refresh on the changed weights
    saved = dkm.state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    fresh = DeepKMeans(model, config, reg)
    assert any(not torch.equal(fresh.assignments[n], v) for n, v in dkm.assignments.items())
    fresh.load_state_dict(saved)
    assert fresh.steps == 2
    assert all(torch.equal(fresh.assignments[n], v) for n, v in dkm.assignments.items())
    with pytest.raises(DeepKMeansError, match="does not match"):
        DeepKMeans(model, config).load_state_dict(saved)


def test_a_beta_that_collapses_a_layer_says_how_many_centers_it_uses() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 8))
    layers = {"0": LayerSpec(K=16, beta=1.0), "1": LayerSpec(K=16, beta=0.01)}
    with pytest.warns(PlanWarning) as caught:
        shared = compress(model, CompressConfig(layers=layers))
    used = torch.bincount(shared_layers(shared)["0"].assignments.long(), minlength=16).count_nonzero()
    assert [str(w.message) for w in caught] == [f"0: beta 1 uses {int(used)} of 16 centers (a smaller beta keeps more)"]
    assert 2 * used < 16
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanWarning)  # plain k-means on the same layer: nothing to say
        compress(model, CompressConfig(layers={"0": LayerSpec(K=16)}))
