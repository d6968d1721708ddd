"""Row-stationary (RS) energy model: mapping search, access counts and energy, dense and shared.

Energy = computation + data movement. Every value's trip through DRAM -> GLB -> array -> RF is
counted with the reuse accounting of Chen et al. (ISCA 2016): a value fetched ``a`` times from DRAM
and reused ``b, c, d`` times at GLB, array and RF costs ``a E_DRAM + ab E_GLB + abc E_array +
abcd E_RF``; a psum accumulated ``abcd`` times costs ``(2a-1) E_DRAM + 2a(b-1) E_GLB +
ab(c-1) E_array + 2abc(d-1) E_RF``. The reuse factors follow from the mapping, and the mapping
minimizing energy is found by exhaustive (vectorized) search.

Loop nest of one layer, outermost first (Eyeriss vocabulary)::

    for each GLB tile of n_glb images x e_glb ofmap rows x m_glb filters    (DRAM level)
      for each channel pass of q*r channels        ifmap of the tile in GLB, psums stay in GLB
        for each filter pass of p*t filters        weights of the pass from GLB to the array
          for each strip of e ofmap rows
            for each group of n images             processing pass on the PE array

Psums never leave the GLB before they are complete, so every ofmap value is written to DRAM once.
The GLB tiles are visited in one of three ways (``Mapping.glb_resident``): ``"none"`` streams the
ifmap once per filter tile and the weights once per image/row tile; ``"ifmaps"`` keeps the tile's
ifmap (all channels) in the GLB across filter tiles; ``"weights"`` makes filter tiles the outer
loop and keeps their weights in the GLB across image/row tiles.

The PE array holds PE sets of R x e PEs (filter row x ofmap row); r sets take different channels,
t sets different filters. Each PE runs 1-D convolutions of p filter rows x q channel rows over n
images: its RF holds p*q filter rows, q ifmap windows and p psums.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from deepkmeans.energy.hardware import EYERISS, LEVELS, Hardware
from deepkmeans.energy.layer import Layer

DATA_TYPES: tuple[str, ...] = ("weights", "ifmaps", "psums")
_RESIDENT: tuple[str, ...] = ("none", "ifmaps", "weights")


@dataclass(frozen=True)
class Mapping:
    """One RS mapping (Eyeriss vocabulary).

    PE level: ``n`` images per pass, ``p`` filters and ``q`` channels per PE, ``e`` ofmap rows per PE
    set, ``r`` / ``t`` sets with different channels / filters. GLB level: tiles of ``n_glb`` images,
    ``m_glb`` filters, ``e_glb`` ofmap rows, and which data stays resident across tiles.
    ``reuse_results``: shared 1-D results are computed once and reused (shared layers only).
    """

    n: int
    p: int
    q: int
    e: int
    r: int
    t: int
    n_glb: int
    m_glb: int
    e_glb: int
    glb_resident: str = "none"
    reuse_results: bool = False


@dataclass(frozen=True)
class Breakdown:
    """Counts and energy of one layer under one mapping.

    ``accesses[level][data_type]`` counts words of that data type's bit-width; a compressed weight
    stream (centers + indexes) is counted in equivalent weight words. ``macs`` are the MACs
    actually performed (the unique ones when shared results are reused).
    """

    macs: float
    adds: float
    accesses: dict[str, dict[str, float]]
    energy: dict[str, dict[str, float]]
    computation: float
    mapping: Mapping

    @property
    def data_movement(self) -> float:
        return sum(sum(per_type.values()) for per_type in self.energy.values())

    @property
    def total(self) -> float:
        return self.computation + self.data_movement

    def level_energy(self, level: str) -> float:
        return sum(self.energy[level].values())

    def type_energy(self, data_type: str) -> float:
        return sum(self.energy[level][data_type] for level in LEVELS)


@dataclass(frozen=True)
class LayerEnergy:
    """Dense and (when the layer is shared) weight-shared energy of one layer."""

    layer: Layer
    dense: Breakdown
    shared: Breakdown | None
    unique_macs: int | None

    @property
    def effective(self) -> Breakdown:
        """The breakdown that counts for the compressed model: shared if the layer is shared."""
        return self.shared if self.shared is not None else self.dense

    @property
    def ratio(self) -> float:
        """Dense energy / shared energy (1 for a dense layer)."""
        return self.dense.total / self.effective.total


@dataclass(frozen=True)
class EnergyResult:
    hardware: Hardware
    layers: tuple[LayerEnergy, ...]

    @property
    def dense_total(self) -> float:
        return sum(le.dense.total for le in self.layers)

    @property
    def shared_total(self) -> float:
        return sum(le.effective.total for le in self.layers)

    @property
    def ratio(self) -> float:
        return self.dense_total / self.shared_total


@dataclass(frozen=True)
class _Workload:
    """What a mapping is priced for: dense, or shared with or without reuse of 1-D results."""

    weight_scale: float
    unique_ratio: float
    adds: float
    reuse_results: bool


def estimate(layers: list[Layer], hw: Hardware = EYERISS) -> EnergyResult:
    """Energy of each layer on the RS accelerator, dense and (where ``sharing`` is set) shared."""
    results = []
    for layer in layers:
        dense = _search(layer, hw, [_Workload(1.0, 1.0, 0.0, False)])
        shared = None
        unique = None
        if layer.sharing is not None:
            unique = unique_macs(layer)
            scale = shared_weight_bits(layer) / (layer.weight_words * layer.weight_bits)
            adds = (layer.macs - unique) / layer.sharing.d
            # Reusing a 1-D result trades d MACs for one add plus its psum traffic; the search keeps
            # the reuse only where it is strictly cheaper (never at d = 1 with default costs).
            shared = _search(
                layer,
                hw,
                [
                    _Workload(scale, 1.0, 0.0, False),
                    _Workload(scale, unique / layer.macs, adds, True),
                ],
            )
        results.append(LayerEnergy(layer, dense, shared, unique))
    return EnergyResult(hw, tuple(results))


def shared_weight_bits(layer: Layer) -> float:
    """Bits that replace the dense weights: K centers of d values plus one index per row."""
    s = layer.sharing
    if s is None:
        raise ValueError(f"layer {layer.name!r} has no weight sharing")
    return s.K * s.d * layer.weight_bits + layer.num_rows(s.d) * s.index_bits


def unique_macs(layer: Layer) -> int:
    """MACs left when each distinct (input slice, center) 1-D computation is done once.

    Conv (rows of length d = R): filter row (m, c, r) meets ifmap row ``h = e*U + r`` of channel c
    for every ofmap row e; rows sharing a center in the same channel on the same ifmap row give the
    same 1-D result, so ``N * F * d * sum_c sum_k |ifmap rows of channel c touched by center k|``.
    R = 1 (FC, 1x1 conv) with rows spanning d channels: row (m, j) meets input slice j of every
    ofmap pixel, and reuse is across identical (j, center) pairs: ``N * E * F * d * |{(j, k)}|``.
    Conv rows shorter than the kernel width (d < R, e.g. scalar sharing) make no two 1-D computations
    identical by construction: no reuse, only the weight traffic shrinks.
    """
    s = layer.sharing
    if s is None:
        raise ValueError(f"layer {layer.name!r} has no weight sharing")
    if layer.R > 1 and s.d < layer.R:
        return layer.macs
    a = s.assignments
    rows = np.arange(a.size, dtype=np.int64)
    if layer.R == 1:
        j = rows % (layer.C // s.d)
        pairs = np.unique(j * s.K + a).size
        return layer.N * layer.E * layer.F * s.d * pairs
    R, U, E = layer.R, layer.U, layer.E
    c = (rows // R) % layer.C
    r = rows % R
    # Ifmap rows touched by (c, k) = union over its filter rows r of {r + e*U : 0 <= e < E}.
    # Progressions with the same r mod U overlap; sorted by r, each adds min(E, gap / U) new rows.
    group = ((c * s.K + a) * U + r % U) * R + r
    group = np.unique(group)
    g, rr = group // R, group % R
    new_group = np.ones(group.size, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    gaps = np.empty(group.size, dtype=np.int64)
    gaps[1:] = (rr[1:] - rr[:-1]) // U
    touched = np.where(new_group, E, np.minimum(E, gaps)).sum()
    return layer.N * layer.F * s.d * int(touched)


def _ceil_div(a, b):
    return -(-a // b)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _real_extent(lo: int, hi: int, pad: int, size: int) -> int:
    """Length of padded range [lo, hi) that holds real (non-padding) data."""
    return max(0, min(hi, pad + size) - max(lo, pad))


def _dram_ifmap_rows(layer: Layer, e_glb: int) -> int:
    """Real ifmap rows read from DRAM over all GLB row tiles (halo rows are read once per tile)."""
    total = 0
    for a in range(0, layer.E, e_glb):
        b = min(layer.E, a + e_glb)
        total += _real_extent(a * layer.U, (b - 1) * layer.U + layer.R, layer.P, layer.H)
    return total


def _pe_grid(layer: Layer, hw: Hardware, e: int) -> dict[str, np.ndarray]:
    """All (p, q, r, t) that fit the RFs and the array for PE sets of R x e; t as large as fits."""
    wb = hw.word_bits
    sets = (hw.array_rows // layer.R) * (hw.array_cols // e)
    p_max = min(layer.M, hw.rf_psum_words * wb // layer.psum_bits)
    q_max = min(layer.C, hw.rf_ifmap_words * wb // (layer.R * layer.act_bits))
    r_max = min(layer.C, sets)
    if p_max < 1 or q_max < 1 or sets < 1:
        return {}
    p, q, r = np.meshgrid(np.arange(1, p_max + 1), np.arange(1, q_max + 1), np.arange(1, r_max + 1), indexing="ij")
    p, q, r = p.ravel(), q.ravel(), r.ravel()
    keep = (p * q * layer.R * layer.weight_bits <= hw.rf_filter_words * wb) & (r <= _ceil_div(layer.C, q))
    p, q, r = p[keep], q[keep], r[keep]
    t = np.minimum(sets // r, _ceil_div(layer.M, p))
    return {"p": p, "q": q, "r": r, "t": t}


def _glb_row_tiles(layer: Layer, e: int) -> list[int]:
    """Ofmap rows per GLB tile: the whole ofmap, or power-of-two multiples of the strip width."""
    tiles = [layer.E]
    k = 1
    while e * k < layer.E:
        tiles.append(e * k)
        k *= 2
    return tiles


def _counts(
    layer: Layer,
    g: dict[str, np.ndarray],
    e: int,
    e_glb: int,
    n: int,
    n_glb: int,
    m_glb: np.ndarray,
    resident: str,
    wl: _Workload,
) -> dict[str, dict[str, np.ndarray]]:
    """Accesses per level and data type for the mappings in ``g`` (vectorized)."""
    N, M, C, R, U, E, F = layer.N, layer.M, layer.C, layer.R, layer.U, layer.E, layer.F
    p, q, r, t = g["p"], g["q"], g["r"], g["t"]
    macs = float(layer.macs)
    w_t, o_t = float(layer.weight_words), float(layer.ofmap_words)
    width = (F - 1) * U + R
    real_width = _real_extent(0, width, layer.P, layer.W)

    images_groups = _ceil_div(N, n)
    batch_tiles = _ceil_div(N, n_glb)
    row_tiles = _ceil_div(E, e_glb)
    strips = _ceil_div(E, e)
    strip_rows = E * U + strips * (R - U)
    qr, pt = q * r, p * t
    channel_passes = _ceil_div(C, qr)
    sum_r = (C // qr) * r + _ceil_div(C % qr, q)
    filter_passes = _ceil_div(M, pt)
    sum_t = (M // pt) * t + _ceil_div(M % pt, p)
    filter_tiles = _ceil_div(M, m_glb)
    weight_fetches = 1 if resident == "weights" else batch_tiles * row_tiles
    ifmap_fetches = 1 if resident == "ifmaps" else filter_tiles

    u, adds = wl.unique_ratio, wl.adds
    one = np.ones(p.shape)
    return {
        "DRAM": {
            "weights": w_t * weight_fetches * wl.weight_scale * one,
            "ifmaps": ifmap_fetches * float(N * C * real_width * _dram_ifmap_rows(layer, e_glb)) * one,
            "psums": o_t * one,
        },
        "GLB": {
            "weights": w_t * images_groups * strips * wl.weight_scale * one,
            "ifmaps": filter_passes * float(N * C * width * strip_rows),
            "psums": 2.0 * o_t * (channel_passes - 1),
        },
        "array": {
            "weights": w_t * images_groups * E * one,
            "ifmaps": sum_t * float(N * C * R * E * width),
            "psums": o_t * (R * sum_r - channel_passes) + adds,
        },
        "RF": {
            "weights": macs * u * one,
            "ifmaps": macs * u * one,
            "psums": 2.0 * o_t * R * (R * C - sum_r) * u + 2.0 * adds,
        },
    }


def _energy(layer: Layer, hw: Hardware, acc: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    bits = {"weights": layer.weight_bits, "ifmaps": layer.act_bits, "psums": layer.psum_bits}
    return {
        level: {dt: acc[level][dt] * hw.level_cost(level) * hw.access_scale(bits[dt]) for dt in DATA_TYPES}
        for level in LEVELS
    }


def _computation(layer: Layer, hw: Hardware, wl: _Workload) -> float:
    mac = hw.mac_cost * hw.mac_scale(layer.weight_bits, layer.act_bits)
    add = hw.add_cost * hw.access_scale(layer.psum_bits)
    return layer.macs * wl.unique_ratio * mac + wl.adds * add


def _search(layer: Layer, hw: Hardware, workloads: list[_Workload]) -> Breakdown:
    """Exhaustive search of the RS mapping minimizing energy, over all ``workloads`` variants."""
    if layer.R > hw.array_rows:
        raise ValueError(
            f"layer {layer.name!r}: filter height R={layer.R} exceeds the PE array height "
            f"{hw.array_rows}; folding filter rows across passes is not modeled"
        )
    best: tuple[float, Mapping, _Workload] | None = None
    width = (layer.F - 1) * layer.U + layer.R
    for e in range(1, min(layer.E, hw.array_cols) + 1):
        g = _pe_grid(layer, hw, e)
        if not g:
            continue
        for e_glb in _glb_row_tiles(layer, e):
            for n_glb in _divisors(layer.N):
                # Filters stay in the RF while every image of the GLB tile streams through, so
                # the largest group, n = n_glb, always wins (n costs no storage).
                n = n_glb
                for resident, wl in itertools.product(_RESIDENT, workloads):
                    m_glb, valid = _fit_glb(layer, hw, g, e_glb, n_glb, width, resident, wl)
                    if not valid.any():
                        continue
                    acc = _counts(layer, g, e, e_glb, n, n_glb, np.maximum(m_glb, 1), resident, wl)
                    energy = _energy(layer, hw, acc)
                    total = _computation(layer, hw, wl) + sum(energy[lv][dt] for lv in LEVELS for dt in DATA_TYPES)
                    total = np.where(valid, total, np.inf)
                    i = int(np.argmin(total))
                    if best is None or total[i] < best[0]:
                        mapping = Mapping(
                            n=n,
                            p=int(g["p"][i]),
                            q=int(g["q"][i]),
                            e=e,
                            r=int(g["r"][i]),
                            t=int(g["t"][i]),
                            n_glb=n_glb,
                            m_glb=int(m_glb[i]),
                            e_glb=e_glb,
                            glb_resident=resident,
                            reuse_results=wl.reuse_results,
                        )
                        best = (float(total[i]), mapping, wl)
    if best is None:
        raise ValueError(
            f"layer {layer.name!r}: no row-stationary mapping fits the hardware "
            f"(GLB {hw.glb_bytes} bytes, RF {hw.rf_ifmap_words}/{hw.rf_filter_words}/{hw.rf_psum_words} words)"
        )
    return _breakdown(layer, hw, best[1], best[2])


def _fit_glb(
    layer: Layer,
    hw: Hardware,
    g: dict[str, np.ndarray],
    e_glb: int,
    n_glb: int,
    width: int,
    resident: str,
    wl: _Workload,
) -> tuple[np.ndarray, np.ndarray]:
    """Largest m_glb (a multiple of p*t) whose psums fit the GLB beside the ifmap and weights it holds."""
    M, C, R, U = layer.M, layer.C, layer.R, layer.U
    pt = np.minimum(M, g["p"] * g["t"])
    qr = np.minimum(C, g["q"] * g["r"])
    ifmap_channels = C if resident == "ifmaps" else qr
    ifmap_bits = n_glb * ifmap_channels * ((e_glb - 1) * U + R) * width * layer.act_bits
    filter_bits = C * R * R * layer.weight_bits * wl.weight_scale
    per_filter = n_glb * e_glb * layer.F * layer.psum_bits + (filter_bits if resident == "weights" else 0)
    pass_weights = 0 if resident == "weights" else pt * qr * R * R * layer.weight_bits * wl.weight_scale
    free = hw.glb_bits - ifmap_bits - pass_weights
    fit = np.floor(np.maximum(free, 0) / per_filter).astype(np.int64)
    m_glb = np.where(fit >= M, M, (fit // pt) * pt)
    return m_glb, m_glb >= pt


def _breakdown(layer: Layer, hw: Hardware, m: Mapping, wl: _Workload) -> Breakdown:
    g = {k: np.array([getattr(m, k)]) for k in ("p", "q", "r", "t")}
    acc = _counts(layer, g, m.e, m.e_glb, m.n, m.n_glb, np.array([m.m_glb]), m.glb_resident, wl)
    energy = _energy(layer, hw, acc)
    return Breakdown(
        macs=layer.macs * wl.unique_ratio,
        adds=wl.adds,
        accesses={lv: {dt: float(acc[lv][dt][0]) for dt in DATA_TYPES} for lv in LEVELS},
        energy={lv: {dt: float(energy[lv][dt][0]) for dt in DATA_TYPES} for lv in LEVELS},
        computation=_computation(layer, hw, wl),
        mapping=m,
    )
