"""The sweep's files: ``sweep.json`` (every measured point), ``sweep.md`` (table) and ``sweep.png`` (plot)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from deepkmeans.files.atomic import write_atomic
from deepkmeans.report.plots import plot_sweep
from deepkmeans.sweep import Anchor, SweepPoint, anchors_for


def sweep_table(points: Sequence[SweepPoint], anchors: Sequence[Anchor] = ()) -> str:
    """Markdown table of the measured points, then the published anchors in a separate table."""
    lines = [
        "| grid | point | per-layer K | per-layer p | test accuracy | test error | paper CR | file CR | file bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pt in points:
        ks = ", ".join(f"{k}={v['K']}" for k, v in pt.layers.items() if v) or "-"
        ps = ", ".join(f"{k}={v['p']:g}" for k, v in pt.layers.items() if v) or "-"
        file_cr = f"{pt.file_cr:.1f}x" if pt.file_cr is not None else "-"
        size = str(pt.file_bytes) if pt.file_bytes is not None else "-"
        lines.append(
            f"| {pt.grid} | {pt.label} | {ks} | {ps} | {100 * pt.test_acc:.2f}% | {pt.error_pct:.2f}% "
            f"| {pt.paper_cr:.1f}x | {file_cr} | {size} |"
        )
    if anchors:
        lines += [
            "",
            "Published results for the same model (from the literature, not measured here; each CR is as"
            " reported by its authors, with their own storage accounting):",
            "",
            "| method | reported CR | reported test error | source |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a.method} | {a.paper_cr:g}x | {a.error_pct:g}% | {a.source} |" for a in anchors]
    return "\n".join(lines)


def write_sweep(
    points: Sequence[SweepPoint], out_dir: str | Path, model: str | None = None, dataset: str | None = None
) -> Path:
    """Write sweep.json, sweep.md (table + plot link) and sweep.png into ``out_dir``; returns sweep.md.

    Published anchors are added when ``model`` / ``dataset`` name a pair the literature reports on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    anchors = anchors_for(model, dataset)
    doc = {
        "model": model,
        "dataset": dataset,
        "points": [asdict(pt) | {"label": pt.label, "error_pct": pt.error_pct} for pt in points],
        "published_anchors": [asdict(a) for a in anchors],
    }
    write_atomic(out / "sweep.json", (json.dumps(doc, indent=2) + "\n").encode())
    plot_sweep(points, anchors, out / "sweep.png")
    subject = f"{model} on {dataset}" if model and dataset else "the model"
    text = "\n".join(
        [
            f"# Accuracy vs compression: {subject}",
            "",
            "Measured: one compressed copy of the model per grid point (K scaled per layer, or sparsity p"
            " shifted per layer), evaluated on the test set. Paper CR: dense bits / (K*d*32 + N*H + bias"
            " bits) over conv + linear layers; file CR: float32 state dict / real compressed file.",
            "",
            sweep_table(points, anchors),
            "",
            "![accuracy vs compression ratio](sweep.png)",
            "",
        ]
    )
    path = out / "sweep.md"
    write_atomic(path, text.encode())
    return path
