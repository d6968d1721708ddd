"""Shape of one layer as the energy model sees it, plus its optional weight-sharing description.

A conv layer has ``M`` filters of ``C`` channels of ``R x R``; its ifmap is ``H x W`` (zero padding
``P``, stride ``U``), its ofmap ``E x F``. A fully connected layer is the conv with ``H = W = R = 1``
(so ``E = F = 1``): ``C`` inputs, ``M`` outputs.

Weight sharing replaces the weight's rows by ``K`` centers. Rows follow the project's row order,
``weight.reshape(-1, d)``: for a conv, ``d = R`` and row ``i`` is filter row ``(m, c, r)`` in
row-major order; for ``R = 1`` (FC or 1x1 conv) a row may span ``d`` consecutive input channels, so
row ``i`` is ``(m, j)`` covering channels ``j*d .. j*d + d - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sharing:
    """K centers of length d and one assignment per row (entropy-coded size optional).

    ``index_bits_per_row`` is the average index size actually stored (e.g. the entropy of the
    assignments); ``None`` means fixed-width indexes of ``ceil(log2 K)`` bits.
    """

    K: int
    d: int
    assignments: np.ndarray = field(repr=False)
    index_bits_per_row: float | None = None

    def __post_init__(self) -> None:
        if self.K < 1:
            raise ValueError(f"number of centers K must be >= 1, got {self.K}")
        if self.d < 1:
            raise ValueError(f"row length d must be >= 1, got {self.d}")
        a = np.asarray(self.assignments)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"assignments must be a 1-D integer array, got shape {a.shape} dtype {a.dtype}")
        if a.size and (int(a.min()) < 0 or int(a.max()) >= self.K):
            raise ValueError(f"assignments must lie in [0, K={self.K}), got [{int(a.min())}, {int(a.max())}]")
        if self.index_bits_per_row is not None and self.index_bits_per_row < 0:
            raise ValueError(f"index_bits_per_row must be >= 0, got {self.index_bits_per_row}")
        object.__setattr__(self, "assignments", a.astype(np.int64, copy=False))

    @property
    def index_bits(self) -> float:
        """Bits per row index: the given (entropy-coded) size, else fixed-width ceil(log2 K)."""
        if self.index_bits_per_row is not None:
            return float(self.index_bits_per_row)
        return float(math.ceil(math.log2(self.K))) if self.K > 1 else 0.0


@dataclass(frozen=True)
class Layer:
    """One conv or FC layer: ``M`` filters, ``C`` channels, ``R x R`` kernel, ``H x W`` ifmap, batch ``N``."""

    name: str
    M: int
    C: int
    H: int
    R: int
    W: int | None = None
    U: int = 1
    P: int = 0
    N: int = 1
    weight_bits: int = 16
    act_bits: int = 16
    psum_bits: int = 16
    sharing: Sharing | None = None

    def __post_init__(self) -> None:
        if self.W is None:
            object.__setattr__(self, "W", self.H)
        for key in ("M", "C", "H", "W", "R", "U", "N", "weight_bits", "act_bits", "psum_bits"):
            value = getattr(self, key)
            if value < 1:
                raise ValueError(f"layer {self.name!r}: {key} must be >= 1, got {value}")
        if self.P < 0:
            raise ValueError(f"layer {self.name!r}: padding P must be >= 0, got {self.P}")
        if self.R > min(self.H, self.W) + 2 * self.P:
            raise ValueError(
                f"layer {self.name!r}: filter {self.R}x{self.R} is larger than the padded ifmap "
                f"{self.H + 2 * self.P}x{self.W + 2 * self.P}"
            )
        if self.sharing is not None:
            self._check_sharing(self.sharing)

    def _check_sharing(self, s: Sharing) -> None:
        if self.R > 1 and self.R % s.d != 0:
            raise ValueError(
                f"layer {self.name!r}: conv rows of length d={s.d} do not tile the kernel width R = {self.R}"
            )
        if self.R == 1 and self.C % s.d != 0:
            raise ValueError(f"layer {self.name!r}: row length d={s.d} does not divide C={self.C}")
        if s.assignments.size != self.num_rows(s.d):
            raise ValueError(
                f"layer {self.name!r}: expected {self.num_rows(s.d)} assignments (one per row of length "
                f"{s.d}), got {s.assignments.size}"
            )

    @property
    def E(self) -> int:
        """Ofmap height."""
        return (self.H + 2 * self.P - self.R) // self.U + 1

    @property
    def F(self) -> int:
        """Ofmap width."""
        return (self.W + 2 * self.P - self.R) // self.U + 1

    @property
    def macs(self) -> int:
        """Dense MACs, ``N*M*C*R^2*E*F`` (zero-padding MACs included, as the array performs them)."""
        return self.N * self.M * self.C * self.R * self.R * self.E * self.F

    @property
    def weight_words(self) -> int:
        return self.M * self.C * self.R * self.R

    @property
    def ofmap_words(self) -> int:
        return self.N * self.M * self.E * self.F

    def num_rows(self, d: int) -> int:
        """Number of weight rows of length ``d``."""
        return self.weight_words // d
