"""Optional: our RS model against ZigZag and nn_dataflow on the benchmark's dense layers.

Skipped unless the tool imports in this interpreter (``pip install -e .[energy-check]`` brings
ZigZag; nn_dataflow needs sympy 1.8, which clashes with torch, so it is usually checked with
``benchmarks/energy_crosscheck.py --nn-dataflow-python ...`` from a venv of its own).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "energy_crosscheck.py"


def _crosscheck():
    spec = importlib.util.spec_from_file_location("energy_crosscheck", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tool", ["zigzag", "nn_dataflow"])
def test_agrees_with_independent_tool(tool: str) -> None:
    pytest.importorskip(tool)
    cc = _crosscheck()
    layers = [cc.padded(layer) for layer in cc.LAYERS]
    ours = cc.run_ours(layers)
    theirs = cc.run_tool(tool, layers)
    checked = 0
    for layer, mine, other in zip(layers, ours, theirs, strict=True):
        # Where our best schedule moves every value once, nothing can do better: DRAM must agree.
        if mine["each_value_once"]:
            assert other["levels"]["DRAM"] == pytest.approx(mine["levels"]["DRAM"], rel=1e-9), layer["name"]
            checked += 1
        assert other["levels"]["total"] == pytest.approx(mine["levels"]["total"], rel=0.10), layer["name"]
    assert checked >= 1
