"""Cross-check the row-stationary energy model against ZigZag and nn_dataflow on the same dense layers.

Each tool runs in a worker process of its own interpreter (it must import there): by default the
current one, or the one given with ``--zigzag-python`` / ``--nn-dataflow-python`` (nn_dataflow needs
sympy 1.8, which clashes with torch, so it usually lives in a venv of its own). Workers read the layer
list as JSON on stdin and print per-level energies as JSON. The main process prints one table:
DRAM / GLB / array / RF / compute / total per layer, ours against each tool, with ratios.

    python benchmarks/energy_crosscheck.py --zigzag-python /tmp/zz-venv/bin/python \\
        --nn-dataflow-python /tmp/nnd-venv/bin/python

Layers are batch 1, 16-bit, on the default Eyeriss hardware (12 x 14 PEs, 108 kB GLB, RF 12 / 224 /
24 words, costs MAC 1, RF 1, array 2, GLB 6, DRAM 200). A padded layer is given to every model as
its padded ifmap (``H + 2P``, no padding), because nn_dataflow derives the ifmap from the ofmap and
so fetches the padding; all three then move the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# name, M (filters), C (channels), H (ifmap, square), R (kernel), P (padding); stride 1, batch 1.
LAYERS: list[dict[str, Any]] = [
    {"name": "lenet5.conv1", "M": 20, "C": 1, "H": 28, "R": 5, "P": 0},
    {"name": "lenet5.conv2", "M": 50, "C": 20, "H": 12, "R": 5, "P": 0},
    {"name": "wrn.conv3x3-64", "M": 64, "C": 64, "H": 32, "R": 3, "P": 1},
    {"name": "wrn.conv3x3-128", "M": 128, "C": 128, "H": 16, "R": 3, "P": 1},
    {"name": "wrn.shortcut1x1", "M": 64, "C": 16, "H": 32, "R": 1, "P": 0},
]
COLUMNS: tuple[str, ...] = ("DRAM", "GLB", "array", "RF", "compute", "total")
WORD_BITS = 16
ARRAY = (12, 14)
GLB_BYTES = 108 * 1024
RF_WORDS = {"ifmap": 12, "filter": 224, "psum": 24}
COSTS = {"MAC": 1.0, "RF": 1.0, "array": 2.0, "GLB": 6.0, "DRAM": 200.0}


def padded(layer: dict[str, Any]) -> dict[str, Any]:
    """The layer with its padding folded into the ifmap, as every model is given it."""
    return layer | {"H": layer["H"] + 2 * layer["P"], "P": 0, "E": layer["H"] + 2 * layer["P"] - layer["R"] + 1}


def _result(levels: dict[str, float | None], compute: float, dram_words: dict[str, float]) -> dict[str, Any]:
    total = compute + sum(v for v in levels.values() if v is not None)
    return {"levels": levels | {"compute": compute, "total": total}, "dram_words": dram_words}


def run_ours(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our RS model on the (padded) layers; also says whether each value moves once from DRAM."""
    from deepkmeans.energy import LEVELS, Hardware, Layer, estimate

    hw = Hardware(
        word_bits=WORD_BITS,
        array_rows=ARRAY[0],
        array_cols=ARRAY[1],
        glb_bytes=GLB_BYTES,
        rf_ifmap_words=RF_WORDS["ifmap"],
        rf_filter_words=RF_WORDS["filter"],
        rf_psum_words=RF_WORDS["psum"],
        mac_cost=COSTS["MAC"],
        rf_cost=COSTS["RF"],
        array_cost=COSTS["array"],
        glb_cost=COSTS["GLB"],
        dram_cost=COSTS["DRAM"],
    )
    specs = [Layer(s["name"], M=s["M"], C=s["C"], H=s["H"], R=s["R"], P=s["P"]) for s in layers]
    out = []
    for le in estimate(specs, hw).layers:
        b, lay = le.dense, le.layer
        res = _result({lv: b.level_energy(lv) for lv in LEVELS}, b.computation, b.accesses["DRAM"])
        compulsory = lay.weight_words + lay.N * lay.C * lay.H * lay.W + lay.ofmap_words
        res["each_value_once"] = sum(b.accesses["DRAM"].values()) == compulsory
        out.append(res)
    return out


def _zigzag_hardware() -> dict[str, Any]:
    """Eyeriss as ZigZag memories: per-PE RFs, a shared GLB and DRAM, 16-bit ports (cost per word)."""

    def port(name: str, kind: str, allocation: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "type": kind,
            "bandwidth_min": WORD_BITS,
            "bandwidth_max": WORD_BITS,
            "allocation": allocation,
        }

    def memory(words: int, cost: float, operands: list[str], ports: list[dict], served: list[str]) -> dict:
        return {
            "size": words * WORD_BITS,
            "r_cost": cost,
            "w_cost": cost,
            "area": 0,
            "latency": 1,
            "operands": operands,
            "ports": ports,
            "served_dimensions": served,
        }

    every = ["I1, fh", "I1, tl", "I2, fh", "I2, tl", "O, fh", "O, tl", "O, fl", "O, th"]
    rw = [port("rw_port_1", "read_write", every)]
    rf_cost = COSTS["RF"]
    return {
        "name": "eyeriss_rs",
        "memories": {
            "rf_ifmap": memory(
                RF_WORDS["ifmap"],
                rf_cost,
                ["I1"],
                [port("r_port_1", "read", ["I1, tl"]), port("w_port_1", "write", ["I1, fh"])],
                [],
            ),
            "rf_filter": memory(
                RF_WORDS["filter"],
                rf_cost,
                ["I2"],
                [port("r_port_1", "read", ["I2, tl"]), port("w_port_1", "write", ["I2, fh"])],
                [],
            ),
            "rf_psum": memory(
                RF_WORDS["psum"],
                rf_cost,
                ["O"],
                [port("r_port_1", "read", ["O, tl", "O, th"]), port("w_port_1", "write", ["O, fh", "O, fl"])],
                [],
            ),
            "glb": memory(GLB_BYTES * 8 // WORD_BITS, COSTS["GLB"], ["I1", "I2", "O"], rw, ["D1", "D2"]),
            "dram": memory(10**9, COSTS["DRAM"], ["I1", "I2", "O"], rw, ["D1", "D2"]),
        },
        "operational_array": {
            "unit_energy": COSTS["MAC"],
            "unit_area": 0,
            "dimensions": ["D1", "D2"],
            "sizes": [ARRAY[1], ARRAY[0]],
        },
    }


def _zigzag_layer(layer: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Workload and RS-like spatial mapping: ofmap rows across the array width (D1), filter rows and
    then filters down its height (D2)."""
    E, R = layer["E"], layer["R"]
    e = max(k for k in range(1, ARRAY[1] + 1) if E % k == 0)
    workload = [
        {
            "id": 0,
            "name": layer["name"],
            "operator_type": "Conv",
            "equation": "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]",
            "dimension_relations": ["ix=1*ox+1*fx", "iy=1*oy+1*fy"],
            "loop_dims": ["B", "K", "C", "OY", "OX", "FY", "FX"],
            "loop_sizes": [1, layer["M"], layer["C"], E, E, R, R],
            "operand_precision": {"W": WORD_BITS, "I": WORD_BITS, "O": WORD_BITS, "O_final": WORD_BITS},
            "operand_source": {"W": 0, "I": 0},
        }
    ]
    d2 = [f"FY, {R}"] + ([f"K, {ARRAY[0] // R}"] if ARRAY[0] // R > 1 else [])
    mapping = [
        {
            "name": "default",
            "spatial_mapping": {"D1": [f"OY, {e}"], "D2": d2},
            "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"},
        }
    ]
    return workload, mapping


def run_zigzag(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ZigZag (LOMA temporal mapping search, minimal energy); it has no array/NoC level."""
    import logging

    import yaml
    from zigzag.api import get_hardware_performance_zigzag

    logging.disable(logging.CRITICAL)
    level_of = {"rf_ifmap": "RF", "rf_filter": "RF", "rf_psum": "RF", "glb": "GLB", "dram": "DRAM"}
    data_type = {"W": "weights", "I": "ifmaps", "O": "psums"}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        hw_path = Path(tmp, "hardware.yaml")
        hw_path.write_text(yaml.safe_dump(_zigzag_hardware(), sort_keys=False))
        for layer in layers:
            workload, mapping = _zigzag_layer(layer)
            Path(tmp, "workload.yaml").write_text(yaml.safe_dump(workload, sort_keys=False))
            Path(tmp, "mapping.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
            _, _, cmes = get_hardware_performance_zigzag(
                str(Path(tmp, "workload.yaml")),
                str(hw_path),
                str(Path(tmp, "mapping.yaml")),
                opt="energy",
                dump_folder=str(Path(tmp, "out")),
                loma_show_progress_bar=False,
            )
            cme = cmes[0][1][0][0]
            levels: dict[str, float | None] = {"DRAM": 0.0, "GLB": 0.0, "array": None, "RF": 0.0}
            dram_words = {}
            for op, energies in cme.mem_energy_breakdown.items():
                mem_op = cme.memory_operand_links.layer_to_mem_op(op)
                mems = cme.accelerator.memory_hierarchy.get_memory_levels(mem_op)
                for mem, energy in zip(mems, energies, strict=True):
                    level = level_of[mem.name]
                    levels[level] += energy
                    if level == "DRAM":
                        dram_words[data_type[str(op)]] = energy / COSTS["DRAM"]
            out.append(_result(levels, float(cme.mac_energy), dram_words))
    return out


def run_nn_dataflow(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nn_dataflow's Eyeriss (row-stationary) map strategy with exhaustive loop blocking, no GLB bypass."""
    from nn_dataflow.core import (
        ConvLayer,
        Cost,
        InputLayer,
        MapStrategyEyeriss,
        Network,
        NNDataflow,
        NodeRegion,
        Option,
        PhyDim2,
        Resource,
    )
    from nn_dataflow.core import DataCategoryEnum as de
    from nn_dataflow.core import MemHierEnum as me

    region = NodeRegion(dim=PhyDim2(1, 1), origin=PhyDim2(0, 0), type=NodeRegion.PROC)
    dram = NodeRegion(dim=PhyDim2(1, 1), origin=PhyDim2(0, 0), type=NodeRegion.DRAM)
    word_bytes = WORD_BITS // 8
    resource = Resource(
        proc_region=region,
        dram_region=dram,
        src_data_region=dram,
        dst_data_region=dram,
        dim_array=PhyDim2(*ARRAY),
        size_gbuf=GLB_BYTES // word_bytes,
        size_regf=sum(RF_WORDS.values()),
        array_bus_width=float("inf"),
        dram_bandwidth=float("inf"),
        no_time_mux=False,
    )
    hier = [0.0] * me.NUM
    hier[me.DRAM], hier[me.GBUF], hier[me.ITCN], hier[me.REGF] = (
        COSTS["DRAM"],
        COSTS["GLB"],
        COSTS["array"],
        COSTS["RF"],
    )
    cost = Cost(mac_op=COSTS["MAC"], mem_hier=tuple(hier), noc_hop=0, idl_unit=0)
    options = Option(sw_gbuf_bypass=(False, False, False), nprocesses=1)
    level_of = {me.DRAM: "DRAM", me.GBUF: "GLB", me.ITCN: "array", me.REGF: "RF"}
    data_type = {de.FIL: "weights", de.IFM: "ifmaps", de.OFM: "psums"}
    out = []
    for layer in layers:
        net = Network(layer["name"])
        net.set_input_layer(InputLayer(layer["C"], layer["H"]))
        net.add("layer", ConvLayer(layer["C"], layer["M"], layer["E"], layer["R"]))
        # A one-layer network lets nn_dataflow pin the weights on chip (no DRAM read); a second layer
        # makes it schedule the layer as inside a real network.
        net.add("next", ConvLayer(layer["M"], 1, layer["E"], 1))
        tops, _ = NNDataflow(net, 1, resource, cost, MapStrategyEyeriss).schedule_search(options)
        access = tops[0]["layer"].scheme["access"]
        levels = {level_of[m]: sum(access[m]) * hier[m] for m in level_of}
        dram_words = {data_type[d]: access[me.DRAM][d] for d in data_type}
        out.append(_result(levels, tops[0]["layer"].total_ops * COSTS["MAC"], dram_words))
    return out


TOOLS = {"zigzag": run_zigzag, "nn_dataflow": run_nn_dataflow}


def run_tool(tool: str, layers: list[dict[str, Any]], python: str | None = None) -> list[dict[str, Any]]:
    """Run ``tool`` in a worker process of ``python`` (nn_dataflow asserts unless run with -O)."""
    cmd = [python or sys.executable, "-O", str(Path(__file__).resolve()), "--worker", tool]
    proc = subprocess.run(
        cmd,
        input=json.dumps(layers),
        capture_output=True,
        text=True,
        check=False,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} worker failed ({' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_comparison(layers: list[dict[str, Any]], ours: list[dict], tools: dict[str, list[dict] | str]) -> str:
    """One block per layer: ours, each tool, and each tool / ours per column."""
    lines = []
    header = f"{'':<24}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'DRAM words W/I/O':>26}"
    for i, layer in enumerate(layers):
        lines.append(
            f"{layer['name']}: M={layer['M']} C={layer['C']} H={layer['H']} R={layer['R']} E={layer['E']} (batch 1)"
        )
        lines.append(header)
        rows = [("ours", ours[i])] + [(t, r[i]) for t, r in tools.items() if not isinstance(r, str)]
        for name, res in rows:
            words = "/".join(f"{res['dram_words'].get(k, 0):.0f}" for k in ("weights", "ifmaps", "psums"))
            lines.append(f"{name:<24}" + "".join(f"{_fmt(res['levels'][c]):>12}" for c in COLUMNS) + f"{words:>26}")
        for name, res in rows[1:]:
            ratio = [
                None
                if res["levels"][c] is None or not ours[i]["levels"][c]
                else res["levels"][c] / ours[i]["levels"][c]
                for c in COLUMNS
            ]
            lines.append(f"{name + ' / ours':<24}" + "".join(f"{_fmt(r):>12}" for r in ratio))
        lines.append("")
    for tool, r in tools.items():
        if isinstance(r, str):
            lines.append(f"{tool}: not run: {r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zigzag-python", help="interpreter that can import zigzag (default: this one)")
    ap.add_argument("--nn-dataflow-python", help="interpreter that can import nn_dataflow (default: this one)")
    ap.add_argument("--worker", choices=sorted(TOOLS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(TOOLS[args.worker](json.loads(sys.stdin.read()))))
        return 0

    layers = [padded(layer) for layer in LAYERS]
    ours = run_ours(layers)
    tools: dict[str, list[dict] | str] = {}
    for tool, python in (("zigzag", args.zigzag_python), ("nn_dataflow", args.nn_dataflow_python)):
        try:
            tools[tool] = run_tool(tool, layers, python)
        except (RuntimeError, OSError) as exc:
            tools[tool] = str(exc)
    print(format_comparison(layers, ours, tools))
    return 0


if __name__ == "__main__":
    sys.exit(main())
