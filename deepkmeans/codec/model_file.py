"""A compressed model as data (shared layers + the rest of the state dict) and its file form, as bytes.

Knows tensors and bytes, not ``torch.nn`` or paths: reading and writing files and rebuilding a runnable module
are the files layer's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deepkmeans.cluster import narrow
from deepkmeans.codec.container import pack, unpack
from deepkmeans.codec.entropy import decode_indexes, encode_indexes
from deepkmeans.errors import DeepKMeansError, FormatError

CENTER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)  # 16-bit values: float16, or bfloat16 for a bfloat16 layer
NORM_DTYPES = (torch.float32, torch.float16)


@dataclass
class LayerCode:
    """One weight-shared layer: K centers of length d and one center index per row.

    ``bits`` < 32: the centers and the layer's ``bias`` are stored at that width (float16, or 8-bit codes on
    the grids ``grid`` / ``bias_grid``); ``centers`` and ``bias`` hold the values they stand for.
    """

    shape: tuple[int, ...]
    d: int
    sparsity_p: float
    centers: torch.Tensor  # (K, d), float32 / float16 / bfloat16: the layer's own dtype
    assignments: torch.Tensor  # (N,) integer
    tied: tuple[str, ...] = ()  # other modules whose weight is this same tensor
    coded: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    bits: int = 32
    grid: torch.Tensor | None = None
    bias: torch.Tensor | None = None  # the module's bias when stored narrow with the centers (bits < 32)
    bias_grid: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.assignments.numel())

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

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
    """Everything needed to rebuild the model: shared layers, all other tensors, ties, architecture.

    ``aliases`` maps a state-dict key to the key of the tensor it is tied to (stored once). ``norms`` maps a
    BatchNorm module to its inference form, a (2, C) tensor of per-channel ``[scale, shift]`` (float32 or
    float16): its output in eval mode is ``x * scale + shift``, and its running statistics are not stored.
    """

    layers: dict[str, LayerCode]
    dense: dict[str, torch.Tensor]
    model: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    norms: dict[str, torch.Tensor] = field(default_factory=dict)

    def _biases(self) -> dict[str, torch.Tensor]:
        return {f"{name}.bias": code.bias for name, code in self.layers.items() if code.bias is not None}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A full state dict with shared weights expanded (tied keys included), ready for ``load_state_dict``."""
        state = dict(self.dense) | self._biases()
        for name, code in self.layers.items():
            weight = code.weight()
            state.update({f"{n}.weight": weight for n in (name, *code.tied)})
        state.update({alias: state[target] for alias, target in self.aliases.items()})
        return state

    def state_dict_dense(self) -> dict[str, torch.Tensor]:
        """The tensors that are not shared weights, tied keys included (nothing is expanded)."""
        state = dict(self.dense) | self._biases()
        state.update({alias: state[target] for alias, target in self.aliases.items() if target in state})
        return state

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every state-dict key the file declares and its shape, without expanding anything."""
        shapes = {k: tuple(v.shape) for k, v in (self.dense | self._biases()).items()}
        for name, code in self.layers.items():
            shapes.update({f"{n}.weight": code.shape for n in (name, *code.tied)})
        shapes.update({alias: shapes[target] for alias, target in self.aliases.items()})
        return shapes

    @property
    def shared_weights(self) -> int:
        return sum(code.numel for code in self.layers.values())


# Weights the shared layers of a file may expand to: at least 2^28 (1 GiB as float32), and more for larger files.
# An index stream can cost far less than a bit per weight (K = 1 needs none), so without this bound a few
# bytes could declare a layer that exhausts memory. The writer refuses what the reader would, so every
# file this tool writes opens with the default; ``max_weights`` raises the bound for one load.
MIN_WEIGHT_LIMIT = 2**28
WEIGHTS_PER_FILE_BYTE = 1024
_MAX_NDIM = 8  # conv1d/2d/3d and linear weights have 2 to 5 dims


def weight_limit(file_bytes: int) -> int:
    """Default bound on the shared weights a file of ``file_bytes`` bytes may declare."""
    return max(MIN_WEIGHT_LIMIT, WEIGHTS_PER_FILE_BYTE * file_bytes)


def to_bytes(cm: CompressedModel) -> bytes:
    """Serialize (format version 4): centers in their dtype (or narrower), indexes rANS-coded, BatchNorm in
    inference form where ``cm.norms`` has it, every other tensor raw, ties by name."""
    tensors: dict[str, torch.Tensor] = {}
    layers_meta: dict[str, Any] = {}
    for name, code in cm.layers.items():
        words, counts = code.stream
        tensors[f"shared/{name}/centers"] = narrow.encode(code.centers, code.bits, code.grid).cpu()
        if words.size:
            tensors[f"shared/{name}/indexes"] = torch.from_numpy(words)
        layers_meta[name] = {"shape": list(code.shape), "d": code.d, "p": code.sparsity_p, "counts": counts.tolist()}
        if code.tied:
            layers_meta[name]["tied"] = list(code.tied)
        if code.bits < 32:
            layers_meta[name]["bits"] = code.bits
            tensors.update(_narrow_tensors(name, code))
    for name, tensor in cm.dense.items():
        tensors[f"dense/{name}"] = tensor.detach().cpu()
    for name, tensor in cm.norms.items():
        tensors[f"norm/{name}"] = tensor.detach().cpu()
    meta: dict[str, Any] = {"model": cm.model, "layers": layers_meta}
    if cm.aliases:
        meta["aliases"] = dict(cm.aliases)
    data = pack(meta, tensors)
    limit = weight_limit(len(data))
    if cm.shared_weights > limit:
        raise DeepKMeansError(
            f"the shared layers expand to {cm.shared_weights} weights from a {len(data)}-byte file, over the"
            f" {limit} a reader accepts by default ({WEIGHTS_PER_FILE_BYTE} per file byte, at least"
            f" {MIN_WEIGHT_LIMIT}); use more centers or less sparsity on the largest layers"
        )
    return data


def _narrow_tensors(name: str, code: LayerCode) -> dict[str, torch.Tensor]:
    """The 8-bit grids and the narrow bias of a layer stored below 32 bits."""
    out = {}
    if code.bits == 8:
        out[f"shared/{name}/grid"] = code.grid.detach().cpu().to(torch.float32)
    if code.bias is not None:
        out[f"shared/{name}/bias"] = narrow.encode(code.bias, code.bits, code.bias_grid).cpu()
        if code.bits == 8:
            out[f"shared/{name}/bias_grid"] = code.bias_grid.detach().cpu().to(torch.float32)
    return out


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _check_entry(info: Any) -> tuple[tuple[int, ...], int, float, list[int], tuple[str, ...], int]:
    """The validated fields of one layer entry: shape, d, p, counts, tied module names and value width."""
    if not isinstance(info, dict) or not {"shape", "d", "p", "counts"} <= info.keys():
        raise ValueError("layer entry needs shape, d, p and counts")
    shape, counts, p, tied = info["shape"], info["counts"], info["p"], info.get("tied", [])
    bits = _int(info.get("bits", 32), "bits")
    if bits not in narrow.WIDTHS:
        raise ValueError(f"bits must be one of {', '.join(map(str, narrow.WIDTHS))}, got {bits}")
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
    if not isinstance(tied, list) or not all(isinstance(t, str) and t for t in tied):
        raise ValueError("tied must be a list of module names")
    return shape, d, float(p), counts, tuple(tied), bits


def _layer_from(name: str, info: Any, tensors: dict[str, torch.Tensor], budget: int, limit: int) -> LayerCode:
    """Validate one layer entry against its tensors, then decode it; ``budget`` bounds its element count."""
    shape, d, p, counts, tied, bits = _check_entry(info)
    numel = math.prod(shape)
    if numel > budget:
        raise ValueError(
            f"{numel} weights bring the shared layers over the {limit} this file may expand to"
            " (pass max_weights= to load a file this large)"
        )
    k = len(counts)
    centers = tensors.get(f"shared/{name}/centers")
    dtypes = {32: CENTER_DTYPES, 16: HALF_DTYPES, 8: (torch.uint8,)}[bits]
    if centers is None or centers.dtype not in dtypes or tuple(centers.shape) != (k, d):
        kinds = ", ".join(str(t).removeprefix("torch.") for t in dtypes)
        raise ValueError(f"centers must be a ({k}, {d}) tensor of {kinds} for {bits}-bit values")
    if numel % d or sum(counts) != numel // d:
        raise ValueError("inconsistent shape, row length and counts")
    words = tensors.get(f"shared/{name}/indexes", torch.zeros(0, dtype=torch.uint32))
    if words.dtype != torch.uint32:
        raise ValueError("index stream must be a 1-D uint32 array")
    assignments = decode_indexes(words.numpy(), np.asarray(counts, dtype=np.int64))
    code = LayerCode(shape, d, p, centers.clone(), torch.from_numpy(assignments), tied)
    return _narrow_values(name, code, bits, tensors) if bits < 32 else code


def _grid(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    grid = tensors.get(key)
    if grid is None or grid.dtype != torch.float32 or tuple(grid.shape) != (2,):
        raise ValueError(f"{key} must be a float32 (2,) tensor [offset, scale]")
    if not bool(torch.isfinite(grid).all()) or float(grid[1]) <= 0:
        raise ValueError(f"{key} must hold a finite offset and a positive finite scale")
    return grid.clone()


def _narrow_values(name: str, code: LayerCode, bits: int, tensors: dict[str, torch.Tensor]) -> LayerCode:
    """Decode the centers and the bias of a layer stored at ``bits`` < 32 into float32 values."""
    code.bits = bits
    code.grid = _grid(tensors, f"shared/{name}/grid") if bits == 8 else None
    code.centers = narrow.decode(code.centers, bits, torch.float32, code.grid)
    bias = tensors.get(f"shared/{name}/bias")
    if bias is not None:
        if bias.dtype not in ((torch.uint8,) if bits == 8 else HALF_DTYPES) or bias.ndim != 1:
            kinds = "uint8" if bits == 8 else "float16 or bfloat16"
            raise ValueError(f"the {bits}-bit bias must be a 1-D {kinds} tensor")
        code.bias_grid = _grid(tensors, f"shared/{name}/bias_grid") if bits == 8 else None
        code.bias = narrow.decode(bias.clone(), bits, torch.float32, code.bias_grid)
    return code


def from_bytes(data: bytes, source: str = "<bytes>", max_weights: int | None = None) -> CompressedModel:
    """Parse and validate; any inconsistency is a :class:`FormatError`."""
    meta, tensors = unpack(data, source)
    return _decode(meta, tensors, source, max_weights or weight_limit(len(data)))


def _decode(meta: dict[str, Any], tensors: dict[str, torch.Tensor], source: str, limit: int) -> CompressedModel:
    layers_meta = meta.get("layers")
    model = meta.get("model", {})
    aliases = meta.get("aliases", {})
    if not isinstance(layers_meta, dict) or not isinstance(model, dict) or not isinstance(aliases, dict):
        raise FormatError(f"{source}: malformed metadata")
    layers = {}
    budget = limit
    for name, info in layers_meta.items():
        try:
            layers[name] = _layer_from(name, info, tensors, budget, limit)
            budget -= layers[name].numel
        except ValueError as exc:
            raise FormatError(f"{source}: layer {name!r}: {exc}") from None
    dense = {k[len("dense/") :]: v for k, v in tensors.items() if k.startswith("dense/")}
    norms = _norms(tensors, source)
    keys = [*dense, *(f"{n}.weight" for name, code in layers.items() for n in (name, *code.tied))]
    keys += [f"{name}.bias" for name, code in layers.items() if code.bias is not None]
    if len(set(keys)) != len(keys):
        raise FormatError(f"{source}: a tensor is declared twice (shared, tied or dense)")
    clash = sorted(norms.keys() & {key.rpartition(".")[0] for key in keys})
    if clash:
        raise FormatError(f"{source}: BatchNorm {clash[0]!r} is stored both in inference form and tensor by tensor")
    cm = CompressedModel(layers, dense, model, {}, norms)
    declared = cm.shapes()
    for alias, target in aliases.items():
        folded = alias.rpartition(".")[0] in norms
        if not isinstance(target, str) or target not in declared or alias in declared or folded:
            raise FormatError(f"{source}: alias {alias!r} -> {target!r} names no tensor of the file or repeats one")
    cm.aliases = dict(aliases)
    return cm


def _norms(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The BatchNorm modules stored in inference form, each a (2, C) float32 or float16 ``[scale, shift]``."""
    norms = {}
    for key, tensor in tensors.items():
        if not key.startswith("norm/"):
            continue
        name = key[len("norm/") :]
        if not name or tensor.dtype not in NORM_DTYPES or tensor.ndim != 2 or tensor.shape[0] != 2:
            raise FormatError(f"{source}: {key} must be a (2, channels) float32 or float16 tensor [scale, shift]")
        norms[name] = tensor
    return norms
