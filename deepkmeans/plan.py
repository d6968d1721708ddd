"""The layer plan: which weights of a model are shared, with what K / p / d and seed, and why the rest stay dense.

Resolved once per model and config and used by re-training, compression, the report and the accounting alike,
so they always agree on the layers. The unit is the weight tensor, not the module: a Parameter held by two
modules (tied weights) is planned, clustered, stored and counted once, under the first module that holds it.
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize

from deepkmeans.cluster.kmeans import FAST_MIN_ROWS
from deepkmeans.cluster.rows import check_row_length, default_row_length, num_rows
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.errors import ConfigError

SHAREABLE: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Embedding,
)
NORMALIZATION: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
try:  # torch >= 2.4
    NORMALIZATION = (*NORMALIZATION, nn.RMSNorm)
except AttributeError:  # pragma: no cover - older torch
    pass


@dataclass(frozen=True)
class ResolvedSpec:
    """A layer's sharing target after defaults (spelled as in :class:`LayerSpec`): K, sparsity p and row length d
    are all concrete; ``bits`` is the
    width of its stored centers and bias, ``beta`` the weight of rate-aware assignment (0: plain k-means),
    ``kmeans`` the k-means path, 'exact' or 'fast' ('auto' resolved by the layer's row count)."""

    K: int
    p: float
    d: int
    bits: int = 32
    beta: float = 0.0
    kmeans: str = "exact"

    @property
    def fast(self) -> bool:
        return self.kmeans == "fast"


@dataclass(frozen=True)
class PlannedLayer:
    """One shareable weight: where it lives, its spec (``None``: left dense) and why it is dense."""

    name: str  # the first module (traversal order) holding the weight
    module_type: str
    shape: tuple[int, ...]
    spec: ResolvedSpec | None
    seed: int
    why_dense: str = ""  # empty when shared, or when the config never asked for this layer
    tied: tuple[str, ...] = ()  # other modules holding the same Parameter
    groups: int = 1  # a convolution's groups (the default row length of a depthwise one is 1)

    @property
    def shared(self) -> bool:
        return self.spec is not None

    @property
    def n_rows(self) -> int:
        return num_rows(self.shape, self.spec.d if self.spec else default_row_length(self.shape, self.groups))


@dataclass(frozen=True)
class LayerPlan:
    """Every shareable weight of a model in traversal order, and the notes of what the config asked for but
    could not get (each says why the layer stays dense)."""

    layers: tuple[PlannedLayer, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def shared(self) -> dict[str, PlannedLayer]:
        return {pl.name: pl for pl in self.layers if pl.shared}

    def __getitem__(self, name: str) -> PlannedLayer:
        for pl in self.layers:
            if pl.name == name or name in pl.tied:
                return pl
        raise KeyError(name)


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed that depends on the layer name, so layers do not share random streams."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def is_shareable(module: nn.Module) -> bool:
    return isinstance(module, SHAREABLE)


def own_parameters(module: nn.Module, skip_weight: bool = False) -> list[nn.Parameter]:
    """The module's direct parameters, with the originals of its parametrized tensors (without the weight's
    when ``skip_weight``: a shared weight is accounted for by its centers)."""
    params = list(module.parameters(recurse=False))
    if parametrize.is_parametrized(module):
        for name, plist in module.parametrizations.items():
            if not (skip_weight and name == "weight"):
                params += list(plist.parameters())
    return params


def parameter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters (a parametrized weight counts as the module's own), in traversal order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if not isinstance(m, parametrize.ParametrizationList)
        and (parametrize.is_parametrized(m) or any(True for _ in m.parameters(recurse=False)))
    ]


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("type:"):
        return pattern[len("type:") :] in {cls.__name__ for cls in type(module).__mro__}
    return fnmatch.fnmatchcase(name, pattern)


def _weight_problem(module: nn.Module) -> str:
    """Why the module's ``weight`` cannot be shared as it is; empty when it is a plain Parameter."""
    if parametrize.is_parametrized(module, "weight"):
        kinds = ", ".join(type(p).__name__ for p in module.parametrizations.weight)
        return (
            f"its weight is computed by a parametrization ({kinds}); remove it first"
            " (torch.nn.utils.parametrize.remove_parametrizations) to share the layer"
        )
    if not isinstance(module._parameters.get("weight"), nn.Parameter):
        owned = ", ".join(n for n, p in module._parameters.items() if p is not None) or "none"
        return (
            f"its weight is not a Parameter of the layer but computed from {owned} (weight_norm or a hook);"
            " remove that first (torch.nn.utils.remove_weight_norm) to share the layer"
        )
    return ""


def build_plan(model: nn.Module, config: CompressConfig) -> LayerPlan:
    """Match config keys to the model (first match wins, ``None`` = dense) and resolve K, p, d and seeds.

    A key is a module name, a glob pattern over names (``layer3.*.conv2``, ``*``) or ``type:Class`` (the
    class or a base class). A key that matches no module with parameters is an error, as is an exact name
    that is not a shareable layer. What a pattern matches but cannot share is left dense with a note.
    """
    modules = parameter_modules(model)
    first_match: dict[str, str] = {}
    for pattern in config.layers:
        hits = [name for name, m in modules if _matches(pattern, name, m)]
        if not hits:
            listed = ", ".join(name for name, m in modules if is_shareable(m))
            raise ConfigError(
                f"compress.layers: {pattern!r} matches no layer of the model; shareable layers are: {listed}"
            )
        for name in hits:
            first_match.setdefault(name, pattern)
    notes: list[str] = []
    for name, m in modules:
        pattern = first_match.get(name)
        if pattern is None or is_shareable(m) or config.layers[pattern] is None:
            continue
        params = ", ".join(n for n, p in m.named_parameters(recurse=False))
        if pattern == name:
            raise ConfigError(f"compress.layers.{name}: a {type(m).__name__} is not a shareable layer ({params})")
        if not isinstance(m, NORMALIZATION):  # normalization stays dense by design: nothing to say
            notes.append(f"{name} ({type(m).__name__}: {params}): not a shareable layer type, left dense")
    layers = _plan_weights([(n, m) for n, m in modules if is_shareable(m)], config, first_match, notes)
    return LayerPlan(tuple(layers), tuple(notes))


def _plan_weights(
    modules: list[tuple[str, nn.Module]],
    config: CompressConfig,
    first_match: dict[str, str],
    notes: list[str],
) -> list[PlannedLayer]:
    """One PlannedLayer per distinct weight tensor; tied holders are recorded, not planned again."""
    groups: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in modules:
        weight = m._parameters.get("weight")
        key = id(weight) if isinstance(weight, nn.Parameter) else id(m)
        groups.setdefault(key, []).append((name, m))
    layers = []
    for holders in groups.values():
        owner, module = holders[0]
        tied = tuple(n for n, _ in holders[1:])
        shape = tuple(module.weight.shape)
        configured = [(n, m, first_match[n]) for n, m in holders if first_match.get(n) is not None]
        configured = [(n, m, pat) for n, m, pat in configured if config.layers[pat] is not None]
        seed = layer_seed(config.seed, owner)
        groups = int(getattr(module, "groups", 1))
        if not configured:
            layers.append(PlannedLayer(owner, type(module).__name__, shape, None, seed, tied=tied, groups=groups))
            continue
        name, holder, pattern = configured[0]
        spec, why = _resolve(holder, shape, config.layers[pattern], f"compress.layers.{pattern} ({name})")
        if why:
            notes.append(f"{owner}: {why}")
        layers.append(PlannedLayer(owner, type(module).__name__, shape, spec, seed, why, tied, groups))
    return layers


def _resolve(module: nn.Module, shape: tuple[int, ...], spec: LayerSpec, where: str) -> tuple[ResolvedSpec | None, str]:
    """The concrete spec of one weight, or ``None`` with the reason it stays dense."""
    problem = _weight_problem(module)
    if problem:
        return None, f"left dense: {problem}"
    d = spec.d if spec.d is not None else default_row_length(shape, int(getattr(module, "groups", 1)))
    try:
        check_row_length(shape, d)
    except ValueError as exc:
        raise ConfigError(f"{where}, weight {shape}: {exc}") from None
    n = num_rows(shape, d)
    if spec.K >= n:
        return None, f"left dense: K={spec.K} >= its {n} rows of length {d}, so sharing would save nothing"
    path = spec.kmeans if spec.kmeans != "auto" else ("fast" if n >= FAST_MIN_ROWS else "exact")
    return ResolvedSpec(spec.K, float(spec.p), d, spec.bits, spec.beta, path), ""
