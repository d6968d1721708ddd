"""A compressed model as data (shared layers + the rest of the state dict) and its file form.

Knows tensors, not ``torch.nn``: rebuilding a runnable module is the API layer's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepkmeans.codec.container import pack, read_file, unpack
from deepkmeans.codec.entropy import decode_indexes, encode_indexes
from deepkmeans.errors import FormatError
from deepkmeans.fileio import write_atomic


@dataclass
class LayerCode:
    """One weight-shared layer: K centers of length d and one center index per row."""

    shape: tuple[int, ...]
    d: int
    sparsity_p: float
    centers: torch.Tensor  # (K, d) float32
    assignments: torch.Tensor  # (N,) integer
    coded: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.assignments.numel())

    def weight(self) -> torch.Tensor:
        """The shared weight: each row replaced by its center, in the layer's shape."""
        return self.centers[self.assignments.long()].reshape(self.shape)

    @property
    def stream(self) -> tuple[np.ndarray, np.ndarray]:
        """The rANS-coded assignments and their counts (encoded on first use unless given as ``coded``)."""
        if self.coded is None:
            self.coded = encode_indexes(self.assignments.cpu().numpy(), self.k)
        return self.coded


@dataclass
class CompressedModel:
    """Everything needed to rebuild the model: shared layers, all other tensors, architecture."""

    layers: dict[str, LayerCode]
    dense: dict[str, torch.Tensor]
    model: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A full state dict with shared weights expanded, ready for ``load_state_dict``."""
        state = dict(self.dense)
        for name, code in self.layers.items():
            state[f"{name}.weight"] = code.weight()
        return state


def to_bytes(cm: CompressedModel) -> bytes:
    """Serialize: centers as float32, indexes rANS-coded, every other tensor raw."""
    tensors: dict[str, np.ndarray] = {}
    layers_meta: dict[str, Any] = {}
    for name, code in cm.layers.items():
        words, counts = code.stream
        tensors[f"shared/{name}/centers"] = code.centers.detach().cpu().to(torch.float32).numpy()
        if words.size:
            tensors[f"shared/{name}/indexes"] = words
        layers_meta[name] = {
            "shape": list(code.shape),
            "d": code.d,
            "p": code.sparsity_p,
            "counts": counts.tolist(),
        }
    for name, tensor in cm.dense.items():
        tensors[f"dense/{name}"] = tensor.detach().cpu().contiguous().numpy()
    meta = {"model": cm.model, "layers": layers_meta}
    return pack(meta, tensors)


# Most weights the shared layers of one file may expand to (1 GiB as float32), checked before anything is
# allocated: without it a few bytes (K = 1 needs no index stream) could declare a layer that exhausts memory.
MAX_SHARED_ELEMENTS = 2**28
_MAX_NDIM = 8  # conv1d/2d/3d and linear weights have 2 to 5 dims


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _layer_from(name: str, info: Any, tensors: dict[str, np.ndarray], budget: int) -> LayerCode:
    """Validate one layer entry against its tensors, then decode it; ``budget`` bounds its element count."""
    if not isinstance(info, dict) or not {"shape", "d", "p", "counts"} <= info.keys():
        raise ValueError("layer entry needs shape, d, p and counts")
    shape, counts, p = info["shape"], info["counts"], info["p"]
    if not isinstance(shape, list) or not 1 <= len(shape) <= _MAX_NDIM:
        raise ValueError(f"shape must be a list of 1 to {_MAX_NDIM} sizes")
    shape = tuple(_int(s, "shape") for s in shape)
    d = _int(info["d"], "d")
    if isinstance(p, bool) or not isinstance(p, int | float):
        raise ValueError(f"sparsity p must be a number, got {type(p).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"sparsity p must be in [0, 1), got {p}")
    if not isinstance(counts, list) or not counts:
        raise ValueError("counts must be a non-empty list")
    counts = [_int(c, "counts") for c in counts]
    if min(shape) < 1 or min(counts) < 0 or d < 1:
        raise ValueError("shape sizes and d must be >= 1, counts >= 0")
    numel = math.prod(shape)
    if numel > budget:
        raise ValueError(f"{numel} weights: shared layers may expand to at most {MAX_SHARED_ELEMENTS} per file")
    k = len(counts)
    centers = tensors.get(f"shared/{name}/centers")
    if centers is None or centers.dtype != np.float32 or centers.shape != (k, d):
        raise ValueError(f"centers must be a float32 ({k}, {d}) tensor")
    if numel % d or sum(counts) != numel // d:
        raise ValueError("inconsistent shape, row length and counts")
    words = tensors.get(f"shared/{name}/indexes", np.zeros(0, dtype=np.uint32))
    assignments = decode_indexes(words, np.asarray(counts, dtype=np.int64))
    return LayerCode(shape, d, float(p), torch.from_numpy(centers.copy()), torch.from_numpy(assignments))


def from_bytes(data: bytes, source: str = "<bytes>") -> CompressedModel:
    """Parse and validate; any inconsistency is a :class:`FormatError`."""
    meta, tensors = unpack(data, source)
    return _decode(meta, tensors, source)


def _decode(meta: dict[str, Any], tensors: dict[str, np.ndarray], source: str) -> CompressedModel:
    layers_meta = meta.get("layers")
    model = meta.get("model", {})
    if not isinstance(layers_meta, dict) or not isinstance(model, dict):
        raise FormatError(f"{source}: malformed metadata")
    layers = {}
    budget = MAX_SHARED_ELEMENTS
    for name, info in layers_meta.items():
        try:
            layers[name] = _layer_from(name, info, tensors, budget)
            budget -= math.prod(layers[name].shape)
        except ValueError as exc:
            raise FormatError(f"{source}: layer {name!r}: {exc}") from None
    dense = {k[len("dense/") :]: torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith("dense/")}
    return CompressedModel(layers, dense, model)


def save(cm: CompressedModel, path: str | Path) -> int:
    """Write the compressed file atomically; returns its size in bytes."""
    data = to_bytes(cm)
    write_atomic(path, data)
    return len(data)


def load(path: str | Path) -> CompressedModel:
    """Read a compressed file written by :func:`save`."""
    meta, tensors = read_file(path)
    return _decode(meta, tensors, str(path))
