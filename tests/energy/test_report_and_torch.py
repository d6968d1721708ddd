"""Reading layer shapes off a torch model, and the table / JSON / plot outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from deepkmeans.energy import estimate, format_table, plot_breakdown, result_to_dict, write_json
from deepkmeans.energy.torch_layers import layers_from_model


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 1),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 8),
    )


def test_layers_from_model_reads_shapes_and_sharing() -> None:
    model = _model()
    rows_fc = 8 * 150 // 5
    shared = {"0": (np.arange(4 * 3 * 3) % 5, 5, 2.0), "4": (np.arange(rows_fc) % 3, 3, 1.5)}
    layers = layers_from_model(model, (3, 10, 10), batch=2, shared=shared)
    conv, pointwise, fc = layers
    assert (conv.name, conv.M, conv.C, conv.H, conv.W, conv.R, conv.U, conv.P, conv.N) == (
        "0",
        4,
        3,
        10,
        10,
        3,
        2,
        1,
        2,
    )
    assert (conv.E, conv.F) == (5, 5)
    assert conv.sharing.d == 3 and conv.sharing.K == 5 and conv.sharing.index_bits == 2.0
    assert (pointwise.M, pointwise.C, pointwise.H, pointwise.R, pointwise.sharing) == (6, 4, 5, 1, None)
    assert (fc.M, fc.C, fc.H, fc.R, fc.E) == (8, 150, 1, 1, 1)
    assert fc.sharing.d == 5
    assert model.training


def test_layers_from_model_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="no Conv2d/Linear module"):
        layers_from_model(_model(), (3, 10, 10), shared={"1": (np.zeros(4), 1, 0.0)})


def test_reports(tmp_path) -> None:
    shared = {"0": (np.arange(4 * 3 * 3) % 5, 5, 2.0)}
    result = estimate(layers_from_model(_model(), (3, 10, 10), shared=shared))
    table = format_table(result)
    for name in ("0", "2", "4", "total", "DRAM", "weights"):
        assert name in table
    data = json.loads(json.dumps(result_to_dict(result)))
    assert data["totals"]["dense"] == pytest.approx(result.dense_total)
    assert data["layers"][0]["unique_macs"] == result.layers[0].unique_macs
    assert data["layers"][1]["shared"] is None

    plot_breakdown(result, tmp_path / "energy.png")
    write_json(result, tmp_path / "energy.json")
    assert (tmp_path / "energy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "energy.json").read_text())["totals"]["ratio"] == pytest.approx(result.ratio)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["energy.json", "energy.png"]


def test_estimate_energy_of_a_compressed_model_leaves_it_as_it_was() -> None:
    from deepkmeans import CompressConfig, LayerSpec, compress, estimate_energy

    model = compress(_model(), CompressConfig(layers={"0": LayerSpec(4), "4": LayerSpec(3, d=5)}))
    model.train()
    result = estimate_energy(model, (3, 10, 10))
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert [le.layer.name for le in result.layers] == ["0", "2", "4"]
    assert result.layers[0].layer.sharing.K == 4 and result.layers[2].layer.sharing.d == 5
    assert result.layers[1].shared is None and result.ratio > 1
