"""Accuracy vs compression ratio: compress one model over a grid of K and sparsity p, measure each point.

The grid passes through the given compression config: one line scales every layer's K (K * s), the
other shifts every layer's sparsity p (p + offset). Each point is a compressed copy of the model, measured
by :func:`deepkmeans.measure` (optionally through a real file). Published results for the same model are
kept as data with their source so that plots can mark them apart from what was measured.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepkmeans.config import CompressConfig
from deepkmeans.data import Batches
from deepkmeans.errors import ConfigError
from deepkmeans.lifecycle import compress
from deepkmeans.measure import Measurement, measure
from deepkmeans.results import RunFiles, RunMetrics

P_MAX = 0.99


@dataclass(frozen=True)
class Anchor:
    """A compression result published in the literature, for comparison only (not measured here)."""

    model: str
    dataset: str
    method: str
    citation: str
    paper_cr: float
    error_pct: float
    source: str


PUBLISHED_ANCHORS: dict[tuple[str, str], tuple[Anchor, ...]] = {
    ("lenet5_caffe", "mnist"): (
        Anchor(
            "lenet5_caffe",
            "mnist",
            "Soft weight-sharing",
            "Ullrich et al. 2017",
            162.0,
            0.97,
            "K. Ullrich, E. Meeds, M. Welling. Soft Weight-Sharing for Neural Network Compression. ICLR 2017"
            " (arXiv:1702.04008), Table 1, LeNet-5-Caffe.",
        ),
        Anchor(
            "lenet5_caffe",
            "mnist",
            "Deep Compression",
            "Han et al. 2016",
            39.0,
            0.74,
            "S. Han, H. Mao, W. J. Dally. Deep Compression: Compressing Deep Neural Networks with Pruning,"
            " Trained Quantization and Huffman Coding. ICLR 2016 (arXiv:1510.00149), Table 1, LeNet-5.",
        ),
    ),
    ("lenet300_100", "mnist"): (
        Anchor(
            "lenet300_100",
            "mnist",
            "Soft weight-sharing",
            "Ullrich et al. 2017",
            64.0,
            1.94,
            "K. Ullrich, E. Meeds, M. Welling. Soft Weight-Sharing for Neural Network Compression. ICLR 2017"
            " (arXiv:1702.04008), Table 1, LeNet-300-100.",
        ),
        Anchor(
            "lenet300_100",
            "mnist",
            "Deep Compression",
            "Han et al. 2016",
            40.0,
            1.58,
            "S. Han, H. Mao, W. J. Dally. Deep Compression: Compressing Deep Neural Networks with Pruning,"
            " Trained Quantization and Huffman Coding. ICLR 2016 (arXiv:1510.00149), Table 1, LeNet-300-100.",
        ),
    ),
}


def anchors_for(model: str | None, dataset: str | None) -> tuple[Anchor, ...]:
    """Published anchors for a (model, dataset) pair; none when the literature numbers do not apply."""
    return PUBLISHED_ANCHORS.get((str(model), str(dataset)), ())


@dataclass(frozen=True)
class SweepPoint:
    """One measured point: which grid it lies on, the concrete per-layer targets, accuracy and sizes.

    ``grid`` is "dense" (the uncompressed model, CR 1), "K" (K scaled by ``k_scale``), "p" (sparsity p
    shifted by ``p_offset``) or "run" (a compressed model of a ``deepkmeans run`` folder, named ``name``).
    ``layers`` maps each config key to its K and p.
    """

    grid: str
    k_scale: float
    p_offset: float
    layers: dict[str, dict[str, Any]]
    test_acc: float
    test_loss: float
    paper_cr: float
    file_cr: float | None
    file_bytes: int | None
    seconds: float
    name: str = ""

    @property
    def error_pct(self) -> float:
        return 100.0 * (1.0 - self.test_acc)

    @property
    def label(self) -> str:
        """Short tag for plots and tables: the grid coordinate of the point, or the run's name."""
        if self.grid == "run":
            return self.name
        if self.grid == "K":
            return f"K x{self.k_scale:g}"
        if self.grid == "p":
            return f"p {self.p_offset:+g}"
        return "dense"


def scaled_config(config: CompressConfig, k_scale: float = 1.0, p_offset: float = 0.0) -> CompressConfig:
    """The config with every layer's K scaled (rounded, >= 1) and sparsity p shifted (clipped to [0, 0.99])."""
    layers = {
        key: None
        if spec is None
        else replace(
            spec,
            K=max(1, math.floor(spec.K * k_scale + 0.5)),
            p=round(min(P_MAX, max(0.0, spec.p + p_offset)), 6),
        )
        for key, spec in config.layers.items()
    }
    return replace(config, layers=layers)


def _targets(config: CompressConfig) -> dict[str, dict[str, Any]]:
    return {key: {"K": spec.K, "p": spec.p, "d": spec.d} for key, spec in config.layers.items() if spec is not None}


def _measure(
    model: nn.Module,
    test_batches: Batches,
    device: torch.device,
    config: CompressConfig | None,
    file_dir: Path | None,
    model_meta: dict[str, Any] | None,
) -> Measurement:
    """Measure ``model`` compressed by ``config`` (``None``: dense)."""
    if config is None:
        return measure(model, test_batches, device)
    shared = compress(model, config)
    save_to = file_dir / "point.dkm" if file_dir is not None else None
    return measure(shared, test_batches, device, save_to=save_to, meta=model_meta)


def run_points(run_dir: str | Path) -> list[SweepPoint]:
    """The compressed models of a ``deepkmeans run`` folder as points (measured there, read from its metrics)."""
    metrics = RunMetrics.read(RunFiles(Path(run_dir)))
    layers = metrics.config.get("compress", {}).get("layers", {})
    return [
        SweepPoint(
            "run",
            1.0,
            0.0,
            layers,
            s.test_acc,
            s.test_loss,
            s.paper_cr,
            s.file_cr,
            s.file_bytes,
            0.0,
            f"{Path(run_dir).name}: {s.label}",
        )
        for s in metrics.stages
    ]


def sweep(
    model: nn.Module,
    test_batches: Batches,
    device: torch.device,
    compress_config: CompressConfig,
    scales: Sequence[float],
    p_offsets: Sequence[float] = (),
    measure_file: bool = True,
    model_meta: dict[str, Any] | None = None,
    on_point: Callable[[SweepPoint], None] | None = None,
) -> list[SweepPoint]:
    """Measure test accuracy and CR of ``model`` compressed at every grid point; ``model`` is not changed.

    The first point is the dense model itself (CR 1). Then one point per K scale (p as configured) and
    one per p offset (K as configured). A point whose rounded K / clipped p repeat an earlier one of the
    same grid is dropped; identical targets on the two lines are measured once. ``measure_file`` also
    writes each compressed file to a temporary folder to report the file CR; ``on_point`` is called
    after each point (e.g. to print progress).
    """
    if not _targets(compress_config):
        raise ConfigError("the compression config names no layer to share")
    plan: list[tuple[str, float, float]] = [("K", float(s), 0.0) for s in scales]
    plan += [("p", 1.0, float(o)) for o in p_offsets]
    jobs: list[tuple[str, float, float, CompressConfig | None]] = [("dense", 1.0, 0.0, None)]
    planned: set[tuple[str, str]] = set()
    for grid, k_scale, p_offset in plan:
        config = scaled_config(compress_config, k_scale, p_offset)
        key = (grid, json.dumps(_targets(config), sort_keys=True))
        if key not in planned:
            planned.add(key)
            jobs.append((grid, k_scale, p_offset, config))

    points: list[SweepPoint] = []
    measured: dict[str, tuple[Measurement, float]] = {}
    with tempfile.TemporaryDirectory(prefix="deepkmeans-sweep-") as tmp:
        file_dir = Path(tmp) if measure_file else None
        for grid, k_scale, p_offset, config in jobs:
            targets = _targets(config) if config is not None else {}
            key = json.dumps(targets, sort_keys=True)
            if key not in measured:  # the configured point lies on both lines: measure it once
                started = time.perf_counter()
                m = _measure(model, test_batches, device, config, file_dir, model_meta)
                measured[key] = (m, time.perf_counter() - started)
            m, seconds = measured[key]
            point = SweepPoint(
                grid, k_scale, p_offset, targets, m.test_acc, m.test_loss, m.paper_cr, m.file_cr, m.file_bytes, seconds
            )
            points.append(point)
            if on_point is not None:
                on_point(point)
    return points
