"""Row-stationary energy model: what a layer costs on an Eyeriss-like chip, dense and weight-shared.

Plain Python + numpy on layer shapes (``torch_layers`` alone imports torch, to read shapes off a
model). ``estimate(layers)`` returns per-layer dense and shared breakdowns; ``report`` formats them.
"""

from deepkmeans.energy.hardware import EYERISS, LEVELS, Hardware
from deepkmeans.energy.layer import Layer, Sharing
from deepkmeans.energy.report import format_table, plot_breakdown, result_to_dict, write_json
from deepkmeans.energy.rs import (
    DATA_TYPES,
    Breakdown,
    EnergyResult,
    LayerEnergy,
    Mapping,
    estimate,
    shared_weight_bits,
    unique_macs,
)

__all__ = [
    "DATA_TYPES",
    "EYERISS",
    "LEVELS",
    "Breakdown",
    "EnergyResult",
    "Hardware",
    "Layer",
    "LayerEnergy",
    "Mapping",
    "Sharing",
    "estimate",
    "format_table",
    "plot_breakdown",
    "result_to_dict",
    "shared_weight_bits",
    "unique_macs",
    "write_json",
]
