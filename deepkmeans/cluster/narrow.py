"""Narrow values: a layer's centers and bias stored in 16 or 8 bits instead of 32.

* 16 bits: IEEE half precision (the values rounded to float16); a bfloat16 tensor keeps its own 16-bit type,
  so the file holds the very values of the model (float16 would flush its small values and overflow its large).
* 8 bits: a per-tensor affine grid ``offset + q * scale`` with ``q`` in ``[0, 255]``; the grid (two
  float32 numbers) is fixed when the layer is shared and stored beside the codes, so values already on it
  round-trip bit for bit (the codes of ``offset + q * scale`` are ``q`` again).
* 32 bits: the values as they are (the layer's own dtype).

The rounding is a straight-through estimator inside a parametrization's forward, so training the centers
(center fine-tuning) sees the stored values in the forward pass and still moves the float32 originals.
"""

from __future__ import annotations

import torch

WIDTHS = (32, 16, 8)
LEVELS = 255  # 8-bit codes 0..255
GRID_BITS = 64  # an 8-bit tensor's grid: offset and scale, two float32


def stored_bits(numel: int, bits: int, dtype_bits: int = 32) -> int:
    """Bits that ``numel`` values take at width ``bits`` (never more than their dtype), grid included."""
    width = min(bits, dtype_bits)
    return numel * width + (GRID_BITS if width == 8 else 0)


def affine_grid(values: torch.Tensor) -> torch.Tensor:
    """The 8-bit grid ``[offset, scale]`` (float32) spanning ``values``; scale 1 for a constant tensor."""
    flat = values.detach().to(torch.float32).flatten()
    low, high = (flat.min(), flat.max()) if flat.numel() else (flat.new_zeros(()), flat.new_zeros(()))
    scale = (high - low) / LEVELS
    return torch.stack([low, torch.where(scale > 0, scale, torch.ones_like(scale))])


def half_type(dtype: torch.dtype) -> torch.dtype:
    """The 16-bit type a tensor of ``dtype`` is stored as at 16 bits: bfloat16 stays bfloat16, all else float16."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float16


def overflows(values: torch.Tensor, bits: int) -> float | None:
    """The largest magnitude of ``values`` when their 16-bit type cannot hold it (it would store as infinite),
    else ``None``; 32 and 8 bits hold any finite value (an 8-bit grid spans the tensor)."""
    if bits != 16 or values.numel() == 0:
        return None
    top = float(values.detach().abs().max())
    return top if top > torch.finfo(half_type(values.dtype)).max else None


def encode(values: torch.Tensor, bits: int, grid: torch.Tensor | None = None) -> torch.Tensor:
    """What the file stores: 16-bit values (:func:`half_type`), uint8 codes on ``grid``, or the values unchanged."""
    if bits == 16:
        return values.detach().to(half_type(values.dtype))
    if bits == 8:
        offset, scale = grid[0], grid[1]
        return torch.round((values.detach().to(torch.float32) - offset) / scale).clamp(0, LEVELS).to(torch.uint8)
    return values.detach()


def decode(stored: torch.Tensor, bits: int, dtype: torch.dtype, grid: torch.Tensor | None = None) -> torch.Tensor:
    """The values ``stored`` stands for, in ``dtype``."""
    if bits == 8:
        return (grid[0] + stored.to(torch.float32) * grid[1]).to(dtype)
    return stored.to(dtype)


def round_to(values: torch.Tensor, bits: int, grid: torch.Tensor | None = None) -> torch.Tensor:
    """``values`` rounded to what width ``bits`` can store, with a straight-through gradient."""
    if bits >= 32 or (bits == 16 and values.element_size() <= 2):
        return values
    rounded = decode(encode(values, bits, grid), bits, values.dtype, grid)
    # rounded + 0 is exactly what the file stores (values + (rounded - values) can miss it by an ulp)
    return rounded + (values - values.detach())
