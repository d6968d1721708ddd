"""Every figure of the report renders to a real PNG, written atomically, and rejects inputs it cannot draw."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans import account, compress
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.report import plots
from deepkmeans.sweep import PUBLISHED_ANCHORS, SweepPoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    """A PNG with real content; no temporary file of the atomic write is left beside it."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_memory_share(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    shared = compress(model, CompressConfig(layers={"0": LayerSpec(K=4), "2": LayerSpec(K=8, p=0.5)}))
    accounting = account(shared)
    assert_png(plots.plot_memory_share(accounting, accounting, tmp_path / "memory.png"))


def test_filters_conv2d_and_conv1d(tmp_path: Path) -> None:
    before = torch.randn(12, 3, 5, 5)
    after = before.round(decimals=1)
    assert_png(plots.plot_filters(before, after, tmp_path / "f2d.png", title="conv"))
    assert_png(plots.plot_filters(torch.randn(6, 2, 7), torch.zeros(6, 2, 7), tmp_path / "f1d.png"), 2000)
    with pytest.raises(ValueError, match="differ in shape"):
        plots.plot_filters(before, after[:4], tmp_path / "bad.png")


@pytest.mark.parametrize("d", [1, 5])
def test_row_distribution(tmp_path: Path, d: int) -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(6, d, generator=gen)
    assignments = torch.randint(0, 6, (800,), generator=gen)
    before = centers[assignments] + 0.5 * torch.randn(800, d, generator=gen)
    after = centers[assignments] + 0.05 * torch.randn(800, d, generator=gen)
    path = plots.plot_row_distribution(before, after, centers, assignments, tmp_path / f"rows{d}.png", title="fc")
    assert_png(path)
    with pytest.raises(ValueError, match="do not fit"):
        plots.plot_row_distribution(before, after, centers[:2], assignments, tmp_path / "bad.png")


def test_hardness(tmp_path: Path) -> None:
    history = {0: {"conv1": 0.6, "fc1": 0.9}, 1: {"conv1": 0.3, "fc1": 0.5}, 2: {"conv1": 0.2, "fc1": 0.3}}
    assert_png(plots.plot_hardness(history, tmp_path / "hardness.png"))
    with pytest.raises(ValueError, match="no hardness"):
        plots.plot_hardness({}, tmp_path / "bad.png")


def _point(grid: str, scale: float, offset: float, acc: float, cr: float) -> SweepPoint:
    return SweepPoint(grid, scale, offset, {}, acc, 0.1, cr, cr * 0.9, 1000, 0.0)


@pytest.mark.parametrize("perfect", [False, True])
def test_sweep_plot(tmp_path: Path, perfect: bool) -> None:
    points = [
        _point("dense", 1.0, 0.0, 1.0 if perfect else 0.992, 1.0),
        _point("K", 0.5, 0.0, 0.95, 150.0),
        _point("K", 1.0, 0.0, 0.985, 100.0),
        _point("p", 1.0, 0.05, 0.97, 140.0),
        *(
            replace(_point("run", 1.0, 0.0, acc, cr), name=f"{run}: {stage}")
            for run, cr in (("a", 100.0), ("b", 160.0))
            for stage, acc in (("compressed, no re-training", 0.9), ("re-trained (kmeans) + compressed", 0.99))
        ),
    ]
    anchors = PUBLISHED_ANCHORS[("lenet5_caffe", "mnist")]
    assert_png(plots.plot_sweep(points, anchors, tmp_path / "sweep.png"))
