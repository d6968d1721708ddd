"""Shared weights at run time: a layer that holds only K centers and one narrow integer index per row.

A shared layer's ``weight`` becomes a ``torch.nn.utils.parametrize`` parametrization, :class:`SharedWeight`:
the parametrization's original tensor is the ``(K, d)`` centers (a Parameter, so fine-tuning the centers
with the assignments fixed is ordinary training: the gather's backward sums the gradient per cluster),
and the assignments are a uint8 / int16 / int32 buffer. ``module.weight`` is rebuilt on each access as
``centers[assignments].reshape(shape)``. :func:`materialize` turns such a model back into plain dense
weights. Tied weights share one parametrization, so the tie survives.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepkmeans.cluster import narrow
from deepkmeans.cluster.rows import from_rows, to_rows
from deepkmeans.codec.entropy import encode_indexes


def copy_module(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copies modules holding computed tensors (e.g. the ``weight`` that legacy
    ``weight_norm`` recomputes before each forward), which deepcopy alone refuses."""
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def index_dtype(k: int) -> torch.dtype:
    """The narrowest integer dtype that holds indexes ``[0, k)``."""
    if k <= 256:
        return torch.uint8
    if k <= 2**15:
        return torch.int16
    return torch.int32


class SharedWeight(nn.Module):
    """Parametrization ``centers (K, d) -> weight``: each row of the weight is the center its index names.

    ``K`` and ``p`` as in :class:`~deepkmeans.config.LayerSpec`; ``bits`` (32, 16 or 8)
    is the width the centers and the layer's bias are stored at; below 32 the forward
    pass rounds the centers to it (straight-through), and ``grid`` / ``bias_grid`` hold the fixed 8-bit grids.
    """

    def __init__(
        self,
        assignments: torch.Tensor,
        shape: tuple[int, ...],
        K: int,
        p: float = 0.0,
        bits: int = 32,
        grid: torch.Tensor | None = None,
        bias_grid: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("assignments", assignments.to(index_dtype(K)))
        self.shape = tuple(int(s) for s in shape)
        self.K = int(K)
        self.p = float(p)
        self.bits = int(bits)
        self.register_buffer("grid", None if grid is None else grid.to(torch.float32))
        self.register_buffer("bias_grid", None if bias_grid is None else bias_grid.to(torch.float32))
        self._stream: tuple[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def d(self) -> int:
        return int(np.prod(self.shape)) // self.assignments.numel()

    def forward(self, centers: torch.Tensor) -> torch.Tensor:
        centers = narrow.round_to(centers, self.bits, self.grid)
        return from_rows(centers.index_select(0, self.assignments.to(torch.int32)), self.shape)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The centers closest to ``weight`` for the fixed assignments: each cluster's mean row (zero for a cluster
        with no row), so ``forward(right_inverse(w)) == w`` for every weight the layer can represent.

        Torch calls it when a weight is assigned (``module.weight = w`` sets the centers) and on registration,
        where it gives the centers their ``(K, d)`` shape before :func:`share_` writes the given ones."""
        rows = to_rows(weight, self.d)
        index = self.assignments.long()
        sums = rows.new_zeros(self.K, rows.shape[1]).index_add_(0, index, rows)
        counts = torch.bincount(index, minlength=self.K).clamp_min(1).to(rows.dtype)
        return sums / counts[:, None]

    def stream(self) -> tuple[np.ndarray, np.ndarray]:
        """rANS-coded assignments and their counts, encoded once per assignment tensor (file, accounting, energy)."""
        key = (self.assignments.data_ptr(), self.assignments._version)
        if self._stream is None or self._stream[0] != key:
            self._stream = (key, encode_indexes(self.assignments.cpu().numpy(), self.K))
        return self._stream[1]

    def extra_repr(self) -> str:
        width = f", bits={self.bits}" if self.bits < 32 else ""
        return f"K={self.K}, d={self.d}, rows={self.assignments.numel()}, p={self.p:g}{width}"


@dataclass(frozen=True)
class SharedLayer:
    """A view of one shared weight of a model: its centers, parametrization and the modules that use it."""

    name: str
    centers: torch.Tensor
    param: SharedWeight
    tied: tuple[str, ...]

    @property
    def assignments(self) -> torch.Tensor:
        return self.param.assignments

    def weight(self) -> torch.Tensor:
        return self.param(self.centers)


def _shared_weight(module: nn.Module) -> SharedWeight | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    plist = module.parametrizations.weight
    if len(plist) == 1 and isinstance(plist[0], SharedWeight):
        return plist[0]
    return None


def shared_layers(model: nn.Module) -> dict[str, SharedLayer]:
    """The shared weights of ``model`` by the name of the first module using each (traversal order)."""
    found: dict[int, tuple[str, list[str], nn.Module]] = {}
    for name, module in model.named_modules():
        param = _shared_weight(module)
        if param is not None:
            entry = found.setdefault(id(module.parametrizations.weight), (name, [], module))
            if entry[0] != name:
                entry[1].append(name)
    return {
        owner: SharedLayer(owner, module.parametrizations.weight.original, _shared_weight(module), tuple(tied))
        for owner, tied, module in found.values()
    }


def shared_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the shared weights (centers and assignments, under every module using them)."""
    prefixes = tuple(f"{n}.parametrizations.weight." for s in shared_layers(model).values() for n in (s.name, *s.tied))
    return {k for k in model.state_dict() if k.startswith(prefixes)}


def share_(
    module: nn.Module,
    centers: torch.Tensor,
    assignments: torch.Tensor,
    sparsity_p: float = 0.0,
    tied: list[nn.Module] | tuple[nn.Module, ...] = (),
    bits: int = 32,
    grids: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> None:
    """Replace ``module.weight`` (and the tied modules' weight) in place by ``centers[assignments]``.

    ``bits`` < 32 stores the centers and the module's bias at that width: both are rounded to it here, on
    8-bit grids spanning them unless ``grids`` (centers', bias') gives the grids (as a file does)."""
    weight = module.weight
    bias = getattr(module, "bias", None)
    bias = bias if isinstance(bias, nn.Parameter) else None
    if grids is None and bits == 8:
        grids = (narrow.affine_grid(centers), None if bias is None else narrow.affine_grid(bias))
    grid, bias_grid = grids or (None, None)
    param = SharedWeight(
        assignments.to(weight.device), tuple(weight.shape), centers.shape[0], sparsity_p, bits, grid, bias_grid
    )
    parametrize.register_parametrization(module, "weight", param.to(weight.device), unsafe=True)
    plist = module.parametrizations.weight
    with torch.no_grad():
        plist.original.copy_(centers)
    plist.original.requires_grad_(weight.requires_grad)
    snap_(module)
    for other in tied:
        # Registering above re-used the tied Parameter for the centers: give this module a placeholder, register
        # to get the parametrized class, then use the very same ParametrizationList. One set of centers and
        # assignments then serves every module of the tie, in forward and in training.
        other.weight = nn.Parameter(weight.new_empty(0), requires_grad=False)
        parametrize.register_parametrization(other, "weight", nn.Identity(), unsafe=True)
        other.parametrizations["weight"] = plist


@torch.no_grad()
def snap_(model: nn.Module) -> None:
    """Round the centers and biases of shared layers stored below 32 bits to their width, in place (after
    training them, so that the model in memory is the one its file stores)."""
    for module in model.modules():
        param = _shared_weight(module)
        if param is None or param.bits >= 32:
            continue
        centers = module.parametrizations.weight.original
        centers.copy_(narrow.round_to(centers, param.bits, param.grid))
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.copy_(narrow.round_to(bias, param.bits, param.bias_grid))


def materialize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Turn every shared weight back into a plain dense Parameter (tied modules keep one Parameter)."""
    model = model if inplace else copy_module(model)
    dense: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if _shared_weight(module) is None:
            continue
        plist = module.parametrizations.weight
        if id(plist) not in dense:
            with torch.no_grad():
                weight = plist[0](plist.original).detach().clone()
            dense[id(plist)] = nn.Parameter(weight, requires_grad=plist.original.requires_grad)
        _unregister(module, dense[id(plist)])
    return model


def _unregister(module: nn.Module, weight: nn.Parameter) -> None:
    """Remove the weight's parametrization without touching its class (which deep copies share)."""
    del module.parametrizations["weight"]
    if len(module.parametrizations) == 0:
        delattr(module, "parametrizations")
        module.__class__ = module.__class__.__bases__[0]
    else:  # other tensors stay parametrized: a new class like the current one, without the weight property
        cls = module.__class__
        attrs = {k: v for k, v in vars(cls).items() if k not in ("weight", "__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, cls.__bases__, attrs)
    module.register_parameter("weight", weight)
    # the weight first, as torch's layers declare it, so the state dict keeps its usual order
    module._parameters = {"weight": weight, **{k: v for k, v in module._parameters.items() if k != "weight"}}
