"""Centers and biases stored at 16 or 8 bits: what the file holds, what the accounting counts, round trips."""

from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans import CompressConfig, LayerSpec, account, compress, load, materialize, save
from deepkmeans.cluster.quantize import entropy_bits
from deepkmeans.codec.container import unpack
from deepkmeans.errors import ConfigError
from deepkmeans.shared import shared_layers, snap_


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)).repeat(1, 4))


def _compressed(bits: int) -> nn.Module:
    torch.manual_seed(0)
    layers = {"conv": LayerSpec(K=4, bits=bits), "fc": LayerSpec(K=3, p=0.5, d=4, bits=bits)}
    return compress(Net(), CompressConfig(layers=layers))


@pytest.mark.parametrize("bits", [16, 8])
def test_narrow_layers_are_counted_at_their_width(bits: int) -> None:
    model = _compressed(bits)
    rows = {la.name: la for la in account(model).layers}
    for name, k, d, n_rows, n_bias in (("conv", 4, 3, 36, 6), ("fc", 3, 4, 30, 5)):
        layer = shared_layers(model)[name]
        h = entropy_bits(layer.assignments.long(), k)
        grid = 64 if bits == 8 else 0  # offset and scale of each 8-bit grid, float32
        # K*d centers at `bits` + N*H + the bias at `bits` (each 8-bit tensor with its grid)
        expected = k * d * bits + grid + n_rows * h + n_bias * bits + grid
        assert rows[name].bits_after == pytest.approx(expected)
        assert rows[name].bits_before == (n_rows * d + n_bias) * 32
    assert account(model).bits_before == (6 * 2 * 9 + 6 + 24 * 5 + 5) * 32


@pytest.mark.parametrize("bits", [16, 8])
def test_file_stores_narrow_tensors_and_reads_back_bit_for_bit(tmp_path: Path, bits: int) -> None:
    model = _compressed(bits)
    path = tmp_path / "m.dkm"
    save(model, path)
    data = path.read_bytes()
    assert data[4:6] == (4).to_bytes(2, "little")
    meta, tensors = unpack(data)
    want = torch.float16 if bits == 16 else torch.uint8
    assert tensors["shared/fc/centers"].dtype == want and tensors["shared/fc/bias"].dtype == want
    assert "dense/fc.bias" not in tensors and "dense/conv.bias" not in tensors
    assert meta["layers"]["fc"]["bits"] == bits
    assert ("shared/fc/grid" in tensors) == (bits == 8)
    loaded = load(path, model=Net(), materialize=False)
    x = torch.randn(3, 2, 5, 5)
    assert torch.equal(loaded(x), model(x))
    for key, value in materialize(model).state_dict().items():
        assert torch.equal(value, materialize(loaded).state_dict()[key]), key
    # the values the model holds are the stored ones: at most 16-bit precision, or 256 levels per tensor
    centers = shared_layers(loaded)["fc"].centers.detach()
    if bits == 16:
        assert torch.equal(centers, centers.half().float())
    else:
        assert len(set(loaded.fc.bias.tolist())) <= 5 and centers.unique().numel() <= 256


def test_narrow_is_smaller_than_full_width(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fc = nn.Sequential(nn.Linear(512, 256))
    models = {
        bits: compress(fc, CompressConfig(layers={"0": LayerSpec(K=256, d=8, bits=bits)})) for bits in (32, 16, 8)
    }
    sizes = {bits: save(m, tmp_path / f"{bits}.dkm") for bits, m in models.items()}
    # 8 KiB of float32 centers and 1 KiB of bias shrink by 2x and 4x (the grids and their names cost a few bytes)
    assert sizes[32] - sizes[16] > 4000 and sizes[16] - sizes[8] > 2000
    crs = {bits: account(m).paper_cr for bits, m in models.items()}
    assert crs[8] > crs[16] > crs[32]


def test_training_moves_the_floats_and_snap_puts_them_back_on_the_grid() -> None:
    model = _compressed(8)
    layer = shared_layers(model)["fc"]
    grid = layer.param.grid
    weight_before = model.fc.weight.detach().clone()
    with torch.no_grad():
        layer.centers.add_(0.3 * grid[1])  # an optimizer step smaller than half an 8-bit step
        model.fc.bias.add_(0.3 * layer.param.bias_grid[1])
    steps = (layer.centers - grid[0]) / grid[1]
    assert not torch.allclose(steps, steps.round(), atol=1e-3)
    assert torch.equal(model.fc.weight, weight_before)  # the forward pass sees the stored (rounded) values
    snap_(model)
    steps = (layer.centers - grid[0]) / grid[1]
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    bias_steps = (model.fc.bias - layer.param.bias_grid[0]) / layer.param.bias_grid[1]
    assert torch.allclose(bias_steps, bias_steps.round(), atol=1e-3)
    assert torch.equal(model.fc.weight, weight_before)


def test_a_bfloat16_model_and_its_16_bit_file_are_bit_for_bit_the_same(tmp_path: Path) -> None:
    """bfloat16 centers and bias are stored as bfloat16: as float16, 1e-6 would lose its precision (subnormal)
    and 1e6 would become infinite, so the model read back would differ from the one written."""
    torch.manual_seed(0)
    model = Net().to(torch.bfloat16)
    with torch.no_grad():
        model.conv.weight.mul_(1e-5)
        model.fc.weight.mul_(1e6)
        model.fc.bias.mul_(1e-6)
    layers = {"conv": LayerSpec(K=4, bits=16), "fc": LayerSpec(K=3, p=0.5, d=4, bits=16)}
    shared = compress(model, CompressConfig(layers=layers))
    path = tmp_path / "m.dkm"
    save(shared, path)
    _, tensors = unpack(path.read_bytes())
    assert tensors["shared/fc/centers"].dtype == torch.bfloat16 and tensors["shared/fc/bias"].dtype == torch.bfloat16
    written = materialize(shared).state_dict()
    for compact in (False, True):
        loaded = load(path, model=Net().to(torch.bfloat16), materialize=compact)
        read = materialize(loaded).state_dict()
        assert written.keys() == read.keys()
        for key, value in written.items():
            assert value.dtype == read[key].dtype and torch.equal(value.view(torch.int16), read[key].view(torch.int16))


@pytest.mark.parametrize("what", ["weight", "bias"])
def test_16_bits_refuse_values_float16_cannot_hold(what: str) -> None:
    """float16's largest value is 65504: a float32 layer beyond it would be stored as infinite centers."""
    model = Net()
    with torch.no_grad():
        getattr(model.fc, what)[0] = -1e5
    layers = {"conv": LayerSpec(K=4, bits=16), "fc": LayerSpec(K=3, d=4, bits=16)}
    with pytest.raises(ConfigError, match=rf"fc at bits 16 is stored as float16, .* its {what} reaches \|100000\|"):
        compress(model, CompressConfig(layers=layers))
    layers["fc"] = LayerSpec(K=3, d=4, bits=8)  # an 8-bit grid spans any finite range
    assert torch.isfinite(materialize(compress(model, CompressConfig(layers=layers))).fc.weight).all()
