import pytest
import torch

from deepkmeans.cluster import narrow


def test_stored_bits_counts_width_and_grid() -> None:
    assert narrow.stored_bits(10, 32) == 320
    assert narrow.stored_bits(10, 16) == 160
    assert narrow.stored_bits(10, 8) == 80 + 64  # codes + offset and scale as float32
    assert narrow.stored_bits(10, 32, dtype_bits=16) == 160  # never wider than the tensor itself


def test_8bit_grid_round_trip_is_exact_on_the_grid() -> None:
    values = torch.tensor([-1.0, 0.3, 2.0, 0.7001])
    grid = narrow.affine_grid(values)
    # offset = min = -1, scale = (2 - -1) / 255
    assert grid.tolist() == pytest.approx([-1.0, 3.0 / 255])
    codes = narrow.encode(values, 8, grid)
    assert codes.dtype == torch.uint8 and codes[0] == 0 and codes[2] == 255
    rounded = narrow.decode(codes, 8, torch.float32, grid)
    assert (rounded - values).abs().max() <= float(grid[1]) / 2 + 1e-7
    # values already on the grid come back bit for bit, and their codes are the same codes
    assert torch.equal(narrow.encode(rounded, 8, grid), codes)
    assert torch.equal(narrow.decode(narrow.encode(rounded, 8, grid), 8, torch.float32, grid), rounded)


def test_16bit_is_half_precision() -> None:
    values = torch.tensor([1.0 + 2**-12, 3.14159])
    stored = narrow.encode(values, 16)
    assert stored.dtype == torch.float16
    assert torch.equal(narrow.round_to(values, 16), values.half().float())


def test_constant_tensor_gets_a_positive_scale() -> None:
    grid = narrow.affine_grid(torch.full((4,), 0.5))
    assert grid.tolist() == [0.5, 1.0]
    assert narrow.round_to(torch.full((4,), 0.5), 8, grid).tolist() == [0.5] * 4


def test_round_to_passes_the_gradient_straight_through() -> None:
    values = torch.tensor([0.1, 0.2, 0.9], requires_grad=True)
    out = narrow.round_to(values, 8, narrow.affine_grid(values))
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert values.grad.tolist() == [1.0, 2.0, 3.0]
    assert narrow.round_to(values, 32) is values


@pytest.mark.parametrize("bits", [16, 8])
def test_round_to_gives_exactly_what_the_file_stores(bits: int) -> None:
    """The forward value of the straight-through rounding is the decoded code itself, bit for bit: an in-memory
    model and the one read back from its file hold the same tensors (values + (rounded - values) can miss by
    an ulp, which made run reports say "bit-identical: NO" for 8-bit biases)."""
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 0.05
    grid = narrow.affine_grid(values) if bits == 8 else None
    stored = narrow.decode(narrow.encode(values, bits, grid), bits, values.dtype, grid)
    assert torch.equal(narrow.round_to(values, bits, grid), stored)
