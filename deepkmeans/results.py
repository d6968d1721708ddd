"""A run folder of ``deepkmeans run``: its file names, defined once, and its typed ``metrics.json``.

Below ``job`` (which writes it) and ``report`` (which reads it), so that neither reaches into the other."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepkmeans.config import from_dict
from deepkmeans.errors import ConfigError, DeepKMeansError
from deepkmeans.files.atomic import write_atomic
from deepkmeans.measure import Measurement
from deepkmeans.train import EpochLog


@dataclass(frozen=True)
class RunFiles:
    """The files of a run folder."""

    root: Path

    METRICS = "metrics.json"
    PRETRAIN = "pretrain.ckpt"
    RETRAIN = "retrain.ckpt"
    NO_RETRAIN = "no_retrain.dkm"
    MODEL = "model.dkm"
    FINETUNE = "finetune.ckpt"
    FINETUNED = "finetuned.dkm"
    ENERGY_PLOT = "energy.png"
    REPORT = "report.md"
    LISTED = (METRICS, PRETRAIN, RETRAIN, NO_RETRAIN, MODEL, FINETUNE, FINETUNED, ENERGY_PLOT)

    def __truediv__(self, name: str) -> Path:
        return self.root / name


@dataclass(frozen=True)
class StageMetrics:
    """One compressed model of the run, measured from its file."""

    label: str
    file: str  # file name inside the run folder
    source: str  # the dense checkpoint that was compressed
    test_acc: float
    test_loss: float
    paper_cr: float
    file_cr: float
    file_bytes: int
    bitwise_equal: bool  # read back from the file == the in-memory weight-shared model
    index_bits: int  # real rANS streams, all layers
    index_bits_ideal: float  # sum of N*H
    val_acc: float | None = None  # on the validation split (config `validation: N`), when the run held one out

    @classmethod
    def of(cls, label: str, source: str, m: Measurement) -> StageMetrics:
        acc = m.accounting
        return cls(
            label,
            Path(m.path or "").name,
            source,
            m.test_acc,
            m.test_loss,
            m.paper_cr,
            m.file_cr or 0.0,
            m.file_bytes or 0,
            bool(m.bitwise_equal),
            acc.index_bits,
            acc.index_bits_ideal,
            m.val_acc,
        )


@dataclass(frozen=True)
class DenseMetrics:
    test_acc: float
    test_loss: float
    val_acc: float | None = None


@dataclass(frozen=True)
class EnergyLayer:
    name: str
    macs: float
    unique_macs: float | None
    dense: float
    shared: float | None
    ratio: float


@dataclass(frozen=True)
class EnergySummary:
    """Row-stationary energy of the final model, batch 1 (normalized: 1 = one 16-bit MAC)."""

    dense: float
    shared: float
    ratio: float
    layers: list[EnergyLayer]


@dataclass(frozen=True)
class RunMetrics:
    """Everything ``metrics.json`` holds; the report reads this object, not string keys."""

    config: dict[str, Any]
    quick: bool
    device: str
    world_size: int
    seconds: float
    dense: DenseMetrics
    stages: list[StageMetrics]  # compressed models in the order made; the last is the final one
    hardness: dict[str, dict[str, float]]  # epoch (as text; "0" = before re-training) -> layer -> hardness
    pretrain_log: list[EpochLog] = field(default_factory=list)
    retrain_log: list[EpochLog] = field(default_factory=list)
    finetune_log: list[EpochLog] = field(default_factory=list)
    energy: EnergySummary | None = None

    @property
    def final(self) -> StageMetrics:
        return self.stages[-1]

    def write(self, files: RunFiles) -> Path:
        path = files / RunFiles.METRICS
        write_atomic(path, (json.dumps(asdict(self), indent=2) + "\n").encode())
        return path

    @classmethod
    def read(cls, files: RunFiles) -> RunMetrics:
        path = files / RunFiles.METRICS
        if not path.is_file():
            raise DeepKMeansError(f"{files.root}: no {RunFiles.METRICS} (is this a run folder of `deepkmeans run`?)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DeepKMeansError(f"{path}: not valid JSON ({exc})") from None
        try:
            metrics = from_dict(cls, data)
        except ConfigError as exc:
            raise DeepKMeansError(f"{path}: not the metrics of a deepkmeans run ({exc})") from None
        if not metrics.stages:
            raise DeepKMeansError(f"{path}: not the metrics of a deepkmeans run (no compressed stage)")
        return metrics
