"""A compressed model as data (shared layers + the rest of the state dict) and its file form.

Knows tensors, not ``torch.nn``: rebuilding a runnable module is the API layer's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepkmeans.codec.container import pack, read_file, unpack, write_atomic
from deepkmeans.codec.entropy import decode_indexes, encode_indexes
from deepkmeans.errors import FormatError


@dataclass
class LayerCode:
    """One weight-shared layer: K centers of length d and one center index per row."""

    shape: tuple[int, ...]
    d: int
    sparsity_p: float
    centers: torch.Tensor  # (K, d) float32
    assignments: torch.Tensor  # (N,) int64

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.assignments.numel())

    def weight(self) -> torch.Tensor:
        """The shared weight: each row replaced by its center, in the layer's shape."""
        return self.centers[self.assignments].reshape(self.shape)


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
        words, counts = encode_indexes(code.assignments.cpu().numpy(), code.k)
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


def _layer_from(name: str, info: Any, tensors: dict[str, np.ndarray]) -> LayerCode:
    try:
        shape = tuple(int(s) for s in info["shape"])
        d = int(info["d"])
        p = float(info["p"])
        counts = np.asarray(info["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad layer entry ({exc})") from None
    centers = tensors.get(f"shared/{name}/centers")
    if centers is None or centers.ndim != 2 or centers.dtype != np.float32:
        raise ValueError("missing or malformed centers")
    k = len(counts)
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if d < 1 or numel <= 0 or numel % d or centers.shape != (k, d) or int(counts.sum()) != numel // d:
        raise ValueError("inconsistent shape, row length, centers and counts")
    words = tensors.get(f"shared/{name}/indexes", np.zeros(0, dtype=np.uint32))
    assignments = decode_indexes(words, counts)
    return LayerCode(shape, d, p, torch.from_numpy(centers.copy()), torch.from_numpy(assignments))


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
    for name, info in layers_meta.items():
        try:
            layers[name] = _layer_from(name, info, tensors)
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
