"""Bit accounting of a model, shared or dense: every parameter counted once, in the paper's terms.

Paper accounting (reference code): a shared layer costs ``K*d*b + N*H + bias bits``, with ``H`` the entropy
of its assignment distribution, and every other parameter ``numel*b`` (b: the tensor's bits per value, 32
for float32). A layer stored narrow (``bits`` 16 or 8) counts its centers and bias at that width, plus the
two float32 numbers of each 8-bit grid. Normalization layers (BatchNorm and kin) are left out of the paper
ratio, as in the reference, and reported on their own. The file ratio divides the dense state dict's bytes by
the real file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepkmeans.cluster.narrow import stored_bits
from deepkmeans.cluster.quantize import entropy_bits
from deepkmeans.cluster.rows import default_row_length, num_rows
from deepkmeans.plan import NORMALIZATION, own_parameters, parameter_modules
from deepkmeans.shared import SharedLayer, shared_layers, shared_state_keys


def value_bits(tensor: torch.Tensor) -> int:
    """Bits per stored value of a tensor (32 for float32)."""
    return tensor.element_size() * 8


@dataclass(frozen=True)
class LayerAccount:
    """One module's parameters in the paper accounting, before and after sharing.

    ``shared`` is False for a module left dense (then K, p, H and the coded size are
    ``None``; ``K`` and ``p`` as in :class:`LayerSpec`);
    ``n_rows`` and ``d`` are ``None`` for a module that has no row structure (e.g. a packed attention
    projection). ``note`` says what else matters (tied weights, why dense).
    """

    name: str
    module_type: str
    shared: bool
    n_rows: int | None
    d: int | None
    K: int | None
    p: float | None
    entropy_bits: float | None  # H, bits per index
    coded_bits: int | None  # real rANS stream size in bits
    bits_before: int
    bits_after: float
    note: str = ""


@dataclass(frozen=True)
class Accounting:
    """Per-module accounting and both compression ratios."""

    layers: list[LayerAccount]
    normalization_bits: int  # BatchNorm-like parameters: not in the paper ratio, stored raw in the file
    dense_bytes: int  # bytes of the dense model's state dict
    file_bytes: int | None

    @property
    def bits_before(self) -> int:
        return sum(la.bits_before for la in self.layers)

    @property
    def bits_after(self) -> float:
        return sum(la.bits_after for la in self.layers)

    @property
    def paper_cr(self) -> float:
        """Paper accounting: dense bits / (K*d*b + N*H + bias bits) over every parameter but normalization."""
        return self.bits_before / self.bits_after

    @property
    def index_bits(self) -> int:
        """Real rANS stream sizes of all shared layers, in bits."""
        return sum(la.coded_bits or 0 for la in self.layers)

    @property
    def index_bits_ideal(self) -> float:
        """Sum of N*H over the shared layers: what an ideal entropy coder would need."""
        return sum(la.n_rows * la.entropy_bits for la in self.layers if la.entropy_bits is not None)

    @property
    def file_cr(self) -> float | None:
        """Bytes of the dense state dict / bytes of the real compressed file."""
        return self.dense_bytes / self.file_bytes if self.file_bytes else None


def shared_account(
    name: str,
    module_type: str,
    shape: tuple[int, ...],
    centers: torch.Tensor,
    assignments: torch.Tensor,
    sparsity_p: float,
    other_bits: int,
    coded_bits: int | None = None,
    note: str = "",
    bits: int = 32,
    other_bits_after: int | None = None,
) -> LayerAccount:
    """Paper bits of one shared weight (plus ``other_bits`` of the module's other parameters, e.g. its bias,
    which count ``other_bits_after`` once shared when stored narrow); centers at ``bits`` per value."""
    k, d = int(centers.shape[0]), int(centers.shape[1])
    n = int(assignments.numel())
    h = entropy_bits(assignments.long(), k)
    before = n * d * value_bits(centers) + other_bits
    rest = other_bits if other_bits_after is None else other_bits_after
    after = stored_bits(k * d, bits, value_bits(centers)) + n * h + rest
    return LayerAccount(name, module_type, True, n, d, k, sparsity_p, h, coded_bits, before, after, note)


def other_bits(module: nn.Module, params: list[torch.Tensor], bits: int = 32) -> tuple[int, int]:
    """Bits of a shared module's parameters other than its weight: dense, and as stored (its bias at ``bits``)."""
    dense = sum(p.numel() * value_bits(p) for p in params)
    bias = getattr(module, "bias", None)
    narrow = [p for p in params if p is bias] if bits < 32 else []
    stored = dense + sum(stored_bits(p.numel(), bits, value_bits(p)) - p.numel() * value_bits(p) for p in narrow)
    return dense, stored


def account(model: nn.Module, file_bytes: int | None = None) -> Accounting:
    """The paper's bit accounting of every parameter of ``model`` (shared layers read off the model)."""
    shared = shared_layers(model)
    tied_to = {t: layer.name for layer in shared.values() for t in layer.tied}
    seen: set[int] = set()
    rows: list[LayerAccount] = []
    norm_bits = 0
    shared_names = set(shared) | set(tied_to)
    for name, module in parameter_modules(model):
        params = [p for p in own_parameters(module, name in shared_names) if id(p) not in seen]
        seen.update(id(p) for p in params)
        bits = sum(p.numel() * value_bits(p) for p in params)
        if name in shared:
            rows.append(_shared_row(name, module, shared[name], params))
        elif isinstance(module, NORMALIZATION):
            norm_bits += bits
        elif name in tied_to:
            if params:
                note = f"weight tied to {tied_to[name]} (counted there)"
                rows.append(
                    LayerAccount(
                        name, type(module).__name__, False, None, None, None, None, None, None, bits, float(bits), note
                    )
                )
        elif params:
            rows.append(_dense_row(name, module, params, bits))
    return Accounting(rows, norm_bits, dense_state_bytes(model), file_bytes)


def _shared_row(name: str, module: nn.Module, layer: SharedLayer, params: list[torch.Tensor]) -> LayerAccount:
    words, _ = layer.param.stream()
    note = f"tied with {', '.join(layer.tied)}" if layer.tied else ""
    dense, stored = other_bits(module, params, layer.param.bits)
    return shared_account(
        name,
        type(module).__name__,
        layer.param.shape,
        layer.centers,
        layer.assignments,
        layer.param.p,
        dense,
        int(words.size) * 32,
        note,
        layer.param.bits,
        stored,
    )


def _dense_row(name: str, module: nn.Module, params: list[torch.Tensor], bits: int) -> LayerAccount:
    weight = module._parameters.get("weight")
    n_rows = d = None
    if weight is not None and weight.ndim >= 2:
        d = default_row_length(tuple(weight.shape), int(getattr(module, "groups", 1)))
        n_rows = num_rows(tuple(weight.shape), d)
    return LayerAccount(name, type(module).__name__, False, n_rows, d, None, None, None, None, bits, float(bits))


def dense_state_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict with every shared weight expanded, each tensor counted once."""
    shared = shared_layers(model)
    skip = shared_state_keys(model)
    total, seen = 0, set()
    for key, tensor in model.state_dict().items():
        if key in skip:
            continue
        ident = (tensor.data_ptr(), tensor.numel(), tensor.dtype) if tensor.numel() else (key,)
        if ident not in seen:
            seen.add(ident)
            total += tensor.numel() * tensor.element_size()
    for layer in shared.values():
        total += layer.param.assignments.numel() * layer.param.d * layer.centers.element_size()
    return total
