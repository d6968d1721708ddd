"""WRN-16-4: output shape, parameter count, and the conv-layer order the per-layer K/p presets rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepkmeans.models.wrn import WideResNet, conv_layer_names, wrn16_4

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
# K list of the reference deploy script for CR 45x (as in shared/presets/wrn16_4.yaml).
PRESET_K_CR45 = [144, 90, 80, 50, 30, 30, 100, 50, 10, 50, 50, 30, 7, 12, 7, 7]


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


def test_preset_k_fits_each_layer() -> None:
    # Rows per layer N = m * n * h; K == N only for the stem (kept lossless), K < N everywhere else.
    rows = [m * n * h for _, (m, n, h, _w) in EXPECTED_CONVS]
    assert len(PRESET_K_CR45) == len(rows) == 16
    assert PRESET_K_CR45[0] == rows[0] == 144
    assert all(k < n for k, n in zip(PRESET_K_CR45[1:], rows[1:], strict=True))


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
