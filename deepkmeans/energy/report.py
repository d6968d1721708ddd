"""Text table, JSON-able dict and stacked-bar plot of an :class:`EnergyResult`.

Energies are normalized: 1 = one 16-bit MAC. Files are written atomically (temporary file in the
same folder, then ``os.replace``) so that an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from deepkmeans.energy.hardware import LEVELS
from deepkmeans.energy.layer import Layer
from deepkmeans.energy.rs import DATA_TYPES, Breakdown, EnergyResult
from deepkmeans.files.atomic import write_atomic, write_figure

_COMPONENTS: tuple[str, ...] = ("computation", "RF", "array", "GLB", "DRAM")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _components(b: Breakdown) -> dict[str, float]:
    """Energy per component: computation, then each memory level innermost first."""
    return {"computation": b.computation} | {lv: b.level_energy(lv) for lv in _COMPONENTS[1:]}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(result: EnergyResult) -> str:
    """Per-layer dense vs shared energy, then where it goes: per level and per data type."""
    summary = []
    for le in result.layers:
        summary.append(
            [
                le.layer.name,
                _fmt(le.layer.macs),
                _fmt(le.unique_macs) if le.unique_macs is not None else "-",
                _fmt(le.dense.total),
                _fmt(le.shared.total) if le.shared is not None else "-",
                f"{le.ratio:.2f}x",
            ]
        )
    summary.append(
        [
            "total",
            _fmt(sum(le.layer.macs for le in result.layers)),
            "",
            _fmt(result.dense_total),
            _fmt(result.shared_total),
            f"{result.ratio:.2f}x",
        ]
    )
    parts = [
        "Energy (normalized: 1 = one 16-bit MAC)",
        _table(["layer", "MACs", "unique MACs", "dense", "shared", "dense/shared"], summary),
    ]

    levels = []
    for le in result.layers:
        for kind, b in (("dense", le.dense), ("shared", le.shared)):
            if b is not None:
                comps = _components(b)
                levels.append(
                    [le.layer.name, kind, *(_fmt(comps[c]) for c in _COMPONENTS), _fmt(b.total), _mapping_str(b)]
                )
    parts += ["", "Breakdown by level", _table(["layer", "model", *_COMPONENTS, "total", "mapping"], levels)]

    by_type = []
    for kind, pick in (("dense", lambda le: le.dense), ("shared", lambda le: le.effective)):
        by_type.append(
            [
                kind,
                *(_fmt(_sum(result, pick, lambda b, dt=dt: b.type_energy(dt))) for dt in DATA_TYPES),
                _fmt(_sum(result, pick, lambda b: b.computation)),
            ]
        )
    parts += ["", "Breakdown by data type (all layers)", _table(["model", *DATA_TYPES, "computation"], by_type)]
    return "\n".join(parts)


def _sum(result: EnergyResult, pick: Callable, value: Callable[[Breakdown], float]) -> float:
    return sum(value(pick(le)) for le in result.layers)


def _mapping_str(b: Breakdown) -> str:
    m = b.mapping
    text = (
        f"n={m.n} p={m.p} q={m.q} e={m.e} r={m.r} t={m.t} "
        f"glb: n={m.n_glb} m={m.m_glb} e={m.e_glb} resident={m.glb_resident}"
    )
    return text + (" reuse" if m.reuse_results else "")


def _layer_dict(layer: Layer) -> dict[str, Any]:
    shape = {k: getattr(layer, k) for k in ("N", "M", "C", "H", "W", "R", "U", "P", "E", "F")}
    bits = {k: getattr(layer, k) for k in ("weight_bits", "act_bits", "psum_bits")}
    sharing = None
    if layer.sharing is not None:
        s = layer.sharing
        sharing = {"K": s.K, "d": s.d, "index_bits_per_row": s.index_bits}
    return {"name": layer.name, "shape": shape, "bits": bits, "sharing": sharing}


def _breakdown_dict(b: Breakdown) -> dict[str, Any]:
    return {
        "macs": b.macs,
        "adds": b.adds,
        "computation": b.computation,
        "total": b.total,
        "level_energy": {lv: b.level_energy(lv) for lv in LEVELS},
        "accesses": b.accesses,
        "energy": b.energy,
        "mapping": asdict(b.mapping),
    }


def result_to_dict(result: EnergyResult) -> dict[str, Any]:
    """Everything in ``result`` as plain JSON types (no numpy, no dataclasses)."""
    return {
        "unit": "normalized energy, 1 = one 16-bit MAC",
        "hardware": asdict(result.hardware),
        "layers": [
            _layer_dict(le.layer)
            | {
                "macs": le.layer.macs,
                "unique_macs": le.unique_macs,
                "dense": _breakdown_dict(le.dense),
                "shared": _breakdown_dict(le.shared) if le.shared is not None else None,
                "ratio": le.ratio,
            }
            for le in result.layers
        ],
        "totals": {"dense": result.dense_total, "shared": result.shared_total, "ratio": result.ratio},
    }


def write_json(result: EnergyResult, path: str | os.PathLike) -> None:
    """Write :func:`result_to_dict` as indented JSON, atomically."""
    text = json.dumps(result_to_dict(result), indent=2)
    write_atomic(path, (text + "\n").encode())


def plot_breakdown(result: EnergyResult, path: str | os.PathLike) -> None:
    """Stacked bars per layer, dense beside shared, split into computation and memory levels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars: list[tuple[str, Breakdown]] = []
    for le in result.layers:
        bars.append((f"{le.layer.name}\ndense", le.dense))
        if le.shared is not None:
            bars.append((f"{le.layer.name}\nshared", le.shared))

    fig = Figure(figsize=(max(6.0, 0.7 * len(bars) + 2.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(bars)))
    bottom = [0.0] * len(bars)
    for comp in _COMPONENTS:
        heights = [_components(b)[comp] for _, b in bars]
        ax.bar(x, heights, bottom=bottom, label=comp)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(x, [label for label, _ in bars], fontsize=7)
    ax.set_ylabel("energy (1 = one 16-bit MAC)")
    ax.set_title(
        f"Row-stationary energy: dense {_fmt(result.dense_total)}, "
        f"shared {_fmt(result.shared_total)} ({result.ratio:.2f}x)"
    )
    ax.legend(fontsize=8)
    write_figure(fig, path, 120)
