"""Accuracy vs CR sweep: fewer centers or more sparsity compress more; every point is really measured."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.data import Batches
from deepkmeans.report.sweep import write_sweep
from deepkmeans.sweep import PUBLISHED_ANCHORS, anchors_for, scaled_config, sweep
from tests.report.test_plots import assert_png


def _tiny_model_and_data() -> tuple[nn.Module, Batches]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(96, 1, 8, 8, generator=gen)
    y = model(x).argmax(1).detach()  # labels the dense model gets right: compression can only lose
    return model, Batches(x, y, batch_size=32, shuffle=False)


CONFIG = CompressConfig(layers={"0": LayerSpec(K=8, p=0.2), "3": LayerSpec(K=16, p=0.5, d=4)})


def test_scaled_config_rounds_and_clips() -> None:
    cfg = scaled_config(CONFIG, k_scale=0.01, p_offset=0.7)
    assert [s.K for s in cfg.layers.values()] == [1, 1]
    assert [s.p for s in cfg.layers.values()] == [0.9, 0.99]
    cfg = scaled_config(CONFIG, k_scale=1.5, p_offset=-0.3)
    assert [(s.K, s.p, s.d) for s in cfg.layers.values()] == [(12, 0.0, None), (24, 0.2, 4)]
    assert [s.K for s in CONFIG.layers.values()] == [8, 16]  # the input config is left alone


def test_sweep_measures_each_point(tmp_path: Path) -> None:
    model, test = _tiny_model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    points = sweep(
        model,
        test,
        torch.device("cpu"),
        CONFIG,
        scales=[0.25, 0.5, 1.0, 2.0, 0.01, 0.02],
        p_offsets=[-0.2, 0.0, 0.3],
        on_point=seen.append,
    )
    assert seen == points
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    dense = points[0]
    assert dense.grid == "dense" and dense.paper_cr == 1.0 and dense.test_acc == 1.0
    by_k = sorted((p for p in points if p.grid == "K"), key=lambda p: p.k_scale)
    assert [p.k_scale for p in by_k] == [0.01, 0.25, 0.5, 1.0, 2.0]  # 0.02 rounds to the same K = 1 as 0.01
    crs = [p.paper_cr for p in by_k]
    assert all(a > b for a, b in zip(crs, crs[1:], strict=False)), crs
    by_p = sorted((p for p in points if p.grid == "p"), key=lambda p: p.p_offset)
    assert [p.paper_cr for p in by_p] == sorted(p.paper_cr for p in by_p)
    for p in points:
        assert 0.0 <= p.test_acc <= 1.0 and p.test_loss >= 0.0
        if p.grid != "dense":
            assert p.paper_cr > 1.0 and p.file_bytes > 0 and p.file_cr > 1.0
    configured = [p for p in points if (p.grid, p.k_scale, p.p_offset) in (("K", 1.0, 0.0), ("p", 1.0, 0.0))]
    assert len(configured) == 2 and configured[0].paper_cr == configured[1].paper_cr  # one measurement, two lines
    assert by_k[0].layers["3"]["K"] == 1 and by_p[-1].layers["0"]["p"] == pytest.approx(0.5)

    md = write_sweep(points, tmp_path / "out")
    assert md == tmp_path / "out" / "sweep.md"
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(doc["points"]) == len(points) and doc["published_anchors"] == []
    text = md.read_text()
    assert f"{100 * by_k[-1].test_acc:.2f}%" in text and "(sweep.png)" in text and "literature" not in text
    assert_png(tmp_path / "out" / "sweep.png")


def test_sweep_without_files_and_with_anchors(tmp_path: Path) -> None:
    model, test = _tiny_model_and_data()
    points = sweep(model, test, torch.device("cpu"), CONFIG, scales=[1.0], measure_file=False)
    assert [p.grid for p in points] == ["dense", "K"] and points[1].file_bytes is None
    text = write_sweep(points, tmp_path, "lenet5_caffe", "mnist").read_text()
    for anchor in PUBLISHED_ANCHORS[("lenet5_caffe", "mnist")]:
        assert anchor.citation in text or anchor.source in text
        assert f"{anchor.paper_cr:g}x" in text and f"{anchor.error_pct:g}%" in text
    assert "not measured here" in text
    assert anchors_for("wrn16_4", "cifar10") == ()
    assert {(a.paper_cr, a.error_pct) for a in anchors_for("lenet300_100", "mnist")} == {(64.0, 1.94), (40.0, 1.58)}
