"""WRN-16-4: output shape, parameter count, and the conv-layer order the per-layer K/p presets rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans.config import load_config
from deepkmeans.models.wrn import WideResNet, conv_layer_names, wrn16_4
from deepkmeans.plan import build_plan

# Conv layers in the reference deploy script's enumeration (stem; per block conv1, conv2, shortcut).
EXPECTED_CONVS = [
    ("conv1", (16, 3, 3, 3)),
    ("layer1.0.conv1", (64, 16, 3, 3)),
    ("layer1.0.conv2", (64, 64, 3, 3)),
    ("layer1.0.shortcut.0", (64, 16, 1, 1)),
    ("layer1.1.conv1", (64, 64, 3, 3)),
    ("layer1.1.conv2", (64, 64, 3, 3)),
    ("layer2.0.conv1", (128, 64, 3, 3)),
    ("layer2.0.conv2", (128, 128, 3, 3)),
    ("layer2.0.shortcut.0", (128, 64, 1, 1)),
    ("layer2.1.conv1", (128, 128, 3, 3)),
    ("layer2.1.conv2", (128, 128, 3, 3)),
    ("layer3.0.conv1", (256, 128, 3, 3)),
    ("layer3.0.conv2", (256, 256, 3, 3)),
    ("layer3.0.shortcut.0", (256, 128, 1, 1)),
    ("layer3.1.conv1", (256, 256, 3, 3)),
    ("layer3.1.conv2", (256, 256, 3, 3)),
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model() -> WideResNet:
    torch.manual_seed(0)
    return wrn16_4()


def test_forward_gives_logits_per_class(model: WideResNet) -> None:
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert model(x).shape == (2, 10)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_parameter_count(model: WideResNet) -> None:
    total = sum(p.numel() for p in model.parameters())
    conv_biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert total == 2_751_146
    # Without conv biases this is the published 2,748,890 (~2.75M) of the bias-free WRN-16-4.
    assert total - conv_biases == 2_748_890


def test_conv_layer_names_order_and_shapes(model: WideResNet) -> None:
    names = conv_layer_names(model)
    modules = dict(model.named_modules())
    assert names == [name for name, _ in EXPECTED_CONVS]
    for name, shape in EXPECTED_CONVS:
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        assert tuple(conv.weight.shape) == shape
        assert conv.bias is not None and conv.bias.shape == (shape[0],)


@pytest.mark.parametrize("config", ["wrn16_4_cifar10.yaml", "wrn16_4_cifar10_cr47.yaml", "wrn16_4_cifar10_cr50.yaml"])
def test_preset_k_fits_each_layer(model: WideResNet, config: str) -> None:
    """Each shipped preset's K against the model's real rows N = m * n * h: K == N only for the stem (left dense
    on purpose, as in the reference), K < N everywhere else, so every other layer is really shared."""
    cfg = load_config(REPO / "configs" / config)
    modules = dict(model.named_modules())
    rows = {name: modules[name].weight.numel() // modules[name].weight.shape[-1] for name in conv_layer_names(model)}
    ks = {name: spec.K for name, spec in cfg.compress.layers.items()}
    assert ks.keys() == rows.keys()
    assert ks["conv1"] == rows["conv1"] == 144
    assert all(ks[name] < rows[name] for name in rows if name != "conv1")
    assert list(build_plan(model, cfg.compress).shared) == [name for name in rows if name != "conv1"]


def test_block_layout_follows_reference(model: WideResNet) -> None:
    modules = dict(model.named_modules())
    # Stride sits on the second conv and the shortcut of a stage's first block.
    assert modules["layer2.0.conv1"].stride == (1, 1)
    assert modules["layer2.0.conv2"].stride == (2, 2)
    assert modules["layer2.0.shortcut.0"].stride == (2, 2)
    assert isinstance(modules["layer1.1.shortcut"], nn.Identity)
    assert modules["layer1.0.dropout"].p == pytest.approx(0.3)
    assert "layer1.0.shortcut.0.weight" in model.state_dict()


def test_rejects_invalid_depth() -> None:
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=15)
