"""Weight sharing on any ``nn.Module``: pick layers, cluster their rows, rebuild, and account for bits."""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from deepkmeans.cluster.quantize import cluster_rows, entropy_bits
from deepkmeans.cluster.rows import check_row_length, default_row_length, num_rows, to_rows
from deepkmeans.codec.model_file import CompressedModel, LayerCode
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.errors import ConfigError

SHAREABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
FLOAT_BITS = 32


@dataclass(frozen=True)
class ResolvedSpec:
    """A layer's sharing target after defaults: K, sparsity p and row length d are all concrete."""

    k: int
    sparsity_p: float
    d: int


def shareable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear modules by name, in traversal order: the layers weight sharing applies to."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SHAREABLE)}


def resolve_specs(model: nn.Module, layers: dict[str, LayerSpec]) -> dict[str, ResolvedSpec]:
    """Match config keys to layers (first match wins); a key that matches nothing is an error.

    A key is a module name, a glob pattern over names (``layer3.*.conv2``, ``*``), or ``type:Class``
    to select by module class (``type:Conv2d``, ``type:Linear``).
    """
    candidates = shareable_layers(model)
    resolved: dict[str, ResolvedSpec] = {}
    for pattern, spec in layers.items():
        if pattern.startswith("type:"):
            matches = [n for n, m in candidates.items() if type(m).__name__ == pattern[len("type:") :]]
        else:
            matches = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise ConfigError(
                f"compress.layers: {pattern!r} matches no conv/linear layer of the model;"
                f" layers are: {', '.join(candidates)}"
            )
        for name in matches:
            if name in resolved:
                continue
            shape = tuple(candidates[name].weight.shape)
            d = spec.d if spec.d is not None else default_row_length(shape)
            try:
                check_row_length(shape, d)
            except ValueError as exc:
                raise ConfigError(f"compress.layers.{pattern} ({name}, weight {shape}): {exc}") from None
            resolved[name] = ResolvedSpec(spec.K, float(spec.p), d)
    return {n: resolved[n] for n in candidates if n in resolved}


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed that depends on the layer name, so layers do not share random streams."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def cluster_layer(weight: torch.Tensor, spec: ResolvedSpec, seed: int) -> LayerCode | None:
    """Cluster one weight's rows; ``None`` when K >= N (the layer stays dense)."""
    shape = tuple(weight.shape)
    if spec.k >= num_rows(shape, spec.d):
        return None
    rows = to_rows(weight.detach().to(torch.float32), spec.d)
    clustering = cluster_rows(rows, spec.k, spec.sparsity_p, seed=seed)
    return LayerCode(shape, spec.d, spec.sparsity_p, clustering.centers.cpu(), clustering.assignments.cpu())


def compress(
    model: nn.Module, config: CompressConfig, model_meta: dict | None = None, apply: bool = True
) -> CompressedModel:
    """Share weights of the configured layers; with ``apply`` the model's weights are replaced in place."""
    specs = resolve_specs(model, config.layers)
    modules = shareable_layers(model)
    codes: dict[str, LayerCode] = {}
    for name, spec in specs.items():
        code = cluster_layer(modules[name].weight, spec, layer_seed(config.seed, name))
        if code is None:
            continue
        codes[name] = code
        if apply:
            with torch.no_grad():
                modules[name].weight.copy_(code.weight().to(modules[name].weight))
    shared_keys = {f"{n}.weight" for n in codes}
    dense = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in shared_keys}
    return CompressedModel(codes, dense, dict(model_meta or {}))


@dataclass(frozen=True)
class LayerAccount:
    """One conv/linear layer's paper-accounting bits, before and after sharing."""

    name: str
    n_rows: int
    d: int
    k: int | None
    sparsity_p: float | None
    entropy_bits: float | None  # H, bits per index
    coded_bits: int | None  # real rANS stream size in bits
    bits_before: int
    bits_after: float


@dataclass(frozen=True)
class Accounting:
    """Per-layer accounting and both compression ratios."""

    layers: list[LayerAccount]
    dense_bytes: int
    file_bytes: int | None

    @property
    def bits_before(self) -> int:
        return sum(la.bits_before for la in self.layers)

    @property
    def bits_after(self) -> float:
        return sum(la.bits_after for la in self.layers)

    @property
    def paper_cr(self) -> float:
        """Paper accounting: dense bits / (K*d*b + N*H + bias bits) over conv + linear layers."""
        return self.bits_before / self.bits_after

    @property
    def index_bits(self) -> int:
        """Real rANS stream sizes of all shared layers, in bits."""
        return sum(la.coded_bits or 0 for la in self.layers)

    @property
    def index_bits_ideal(self) -> float:
        """sum of N*H over the shared layers: what an ideal entropy coder would need."""
        return sum(la.n_rows * la.entropy_bits for la in self.layers if la.entropy_bits is not None)

    @property
    def file_cr(self) -> float | None:
        """float32 bytes of the whole dense state dict / bytes of the real compressed file."""
        return self.dense_bytes / self.file_bytes if self.file_bytes else None


def account(model: nn.Module, cm: CompressedModel, file_bytes: int | None = None) -> Accounting:
    """Compute the paper's bit accounting for every conv/linear layer, shared or left dense."""
    rows = []
    for name, module in shareable_layers(model).items():
        bias_bits = module.bias.numel() * FLOAT_BITS if module.bias is not None else 0
        numel = module.weight.numel()
        before = numel * FLOAT_BITS + bias_bits
        code = cm.layers.get(name)
        if code is None:
            d = default_row_length(tuple(module.weight.shape))
            rows.append(LayerAccount(name, numel // d, d, None, None, None, None, before, float(before)))
            continue
        h = entropy_bits(code.assignments, code.k)
        words, _ = code.stream
        after = code.k * code.d * FLOAT_BITS + code.n_rows * h + bias_bits
        rows.append(
            LayerAccount(name, code.n_rows, code.d, code.k, code.sparsity_p, h, int(words.size) * 32, before, after)
        )
    dense_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    dense_bytes += sum(t.numel() * t.element_size() for t in model.state_dict().values() if not t.is_floating_point())
    return Accounting(rows, dense_bytes, file_bytes)
