"""The Python API on a model the tool does not ship: a small residual network built here."""

from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans import api
from deepkmeans.compress import resolve_specs
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.errors import ConfigError, FormatError


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


def test_layer_selection_by_name_pattern_and_type() -> None:
    model = TinyResNet()
    specs = resolve_specs(
        model,
        {
            "stem": LayerSpec(4),
            "blocks.*.shortcut": LayerSpec(2, d=1),
            "type:Conv2d": LayerSpec(8, 0.5),
            "type:Linear": LayerSpec(4, d=4),
        },
    )
    assert specs["stem"].k == 4
    assert specs["blocks.1.shortcut"].k == 2 and specs["blocks.1.shortcut"].d == 1
    assert specs["blocks.0.conv2"].k == 8 and specs["blocks.0.conv2"].sparsity_p == 0.5
    assert specs["head"].d == 4
    with pytest.raises(ConfigError, match="matches no conv/linear layer"):
        resolve_specs(model, {"blocks.9.*": LayerSpec(4)})
    with pytest.raises(ConfigError, match="does not divide"):
        resolve_specs(model, {"head": LayerSpec(4, d=3)})


def test_retrain_in_own_loop_then_compress_save_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    layers = {"type:Conv2d": LayerSpec(6, 0.3), "head": LayerSpec(4, d=4)}
    reg = api.KMeansRegularizer(model, layers, method="kmeans", lam=1.0, refresh_every=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,))
    first = float(reg.penalty().detach())
    for _ in range(30):  # the user's own training loop with the callable penalty
        loss = nn.functional.cross_entropy(model(x), y) + reg.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        reg.step()
    assert float(reg.penalty().detach()) < first

    cm = api.compress(model, CompressConfig(layers=layers))
    path = tmp_path / "tiny.dkm"
    api.save(cm, path)
    model.eval()
    restored = api.load(path, model=TinyResNet()).eval()
    assert torch.equal(restored(x), model(x))
    for name in ("stem", "blocks.0.conv1", "blocks.1.shortcut"):
        weight = dict(restored.named_modules())[name].weight
        assert len(torch.unique(weight.reshape(-1, weight.shape[-1]), dim=0)) <= 6
    with pytest.raises(FormatError, match="names no built-in architecture"):
        api.load(path)
    with pytest.raises(FormatError, match="do not fit the model"):
        api.load(path, model=nn.Sequential(nn.Linear(3, 3)))
