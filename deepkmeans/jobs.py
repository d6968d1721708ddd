"""The command line's verbs as library calls on files: each takes paths and configs and returns typed results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deepkmeans.accounting import Accounting, account
from deepkmeans.config import RunConfig
from deepkmeans.data import load_data
from deepkmeans.energy.rs import EnergyResult
from deepkmeans.energy.torch_layers import estimate_energy
from deepkmeans.errors import DeepKMeansError
from deepkmeans.fileio import check_writable
from deepkmeans.files import LoadedModel, load_model_file, save
from deepkmeans.lifecycle import compress
from deepkmeans.measure import Measurement, measure
from deepkmeans.models import build_model, model_info
from deepkmeans.pipeline import model_meta, pretrain, retrain, start_session
from deepkmeans.sweep import SweepPoint, sweep
from deepkmeans.train import EpochLog, pick_device

if TYPE_CHECKING:
    from deepkmeans.export import OnnxExport


def train_checkpoint(cfg: RunConfig, output: str | Path) -> list[EpochLog]:
    """Pre-train the config's model into ``output`` (resumes when it holds the same run)."""
    check_writable(output)
    session = start_session(cfg, cfg.train.batch_size)
    _, log = pretrain(cfg, session, Path(output))
    return log


def _checkpoint(path: str | Path) -> LoadedModel:
    loaded = load_model_file(path)
    if loaded.compressed:
        raise DeepKMeansError(f"{path}: is a compressed file; this command needs a training checkpoint")
    return loaded


def retrain_checkpoint(checkpoint: str | Path, cfg: RunConfig, output: str | Path) -> list[EpochLog]:
    """Deep k-Means re-training of a checkpoint into ``output``, printing each layer's hardness per epoch."""
    check_writable(output)
    loaded = _checkpoint(checkpoint)
    session = start_session(cfg, cfg.retrain.batch_size, dataset=loaded.dataset)
    meta = {"model": loaded.name, "dataset": loaded.dataset}
    log, _ = retrain(cfg, loaded.model, session, Path(output), meta, verbose=True)
    return log


def compress_checkpoint(checkpoint: str | Path, cfg: RunConfig, output: str | Path) -> Accounting:
    """Weight-share a checkpoint with ``cfg.compress`` and write the compressed file; returns its accounting."""
    check_writable(output)
    loaded = _checkpoint(checkpoint)
    shared = compress(loaded.model.cpu(), cfg.compress, inplace=True)
    size = save(shared, output, {"name": loaded.name, "dataset": loaded.dataset})
    return account(shared, size)


@dataclass(frozen=True)
class Evaluation:
    """A model file measured on its dataset's test split."""

    file: str
    model: str | None
    dataset: str
    measurement: Measurement


def evaluate_file(path: str | Path, data_dir: str | None = None, device: str = "auto") -> Evaluation:
    """Test accuracy and accounting of a compressed file (compact, as stored) or a checkpoint (dense)."""
    loaded = load_model_file(path)
    if not isinstance(loaded.dataset, str):
        raise DeepKMeansError(f"{path}: does not name its dataset")
    _, test = load_data(loaded.dataset, data_dir, 256)
    size = loaded.file_bytes if loaded.compressed else None
    m = measure(loaded.model, test, pick_device(device), file_bytes=size)
    return Evaluation(str(path), loaded.name, loaded.dataset, m)


def energy_of(path: str | Path | None, model_name: str | None, batch: int = 1) -> EnergyResult:
    """Row-stationary energy of a model file (dense vs shared) or of a built-in model (dense)."""
    if (path is None) == (model_name is None):
        raise DeepKMeansError("energy needs exactly one of FILE or --model NAME")
    if model_name is not None:
        model, name = build_model(model_name), model_name
    else:
        loaded = load_model_file(path)
        model, name = loaded.model, loaded.name
        if not isinstance(name, str):
            raise DeepKMeansError(f"{path}: does not name a built-in architecture")
    return estimate_energy(model, model_info(name).input_shape, batch)


def export_file(path: str | Path, output: str | Path, fmt: str = "onnx", dense: bool = False) -> OnnxExport:
    """Export a compressed file (or a checkpoint) of a built-in architecture; shared layers stay compressed."""
    from deepkmeans.export import export_onnx

    if fmt != "onnx":
        raise DeepKMeansError(f"unknown export format {fmt!r}; known: onnx")
    check_writable(output)
    loaded = load_model_file(path)
    if not isinstance(loaded.name, str):
        raise DeepKMeansError(f"{path}: does not name a built-in architecture; use deepkmeans.export.export_onnx")
    example = torch.zeros(1, *model_info(loaded.name).input_shape)
    return export_onnx(loaded.model, example, output, dense=dense)


def sweep_checkpoint(
    checkpoint: str | Path,
    cfg: RunConfig,
    scales: Sequence[float],
    p_offsets: Sequence[float],
    out_dir: str | Path,
    on_point: Callable[[SweepPoint], None] | None = None,
) -> Path:
    """Accuracy vs compression ratio of one checkpoint over a K / p grid; writes sweep.json / .md / .png."""
    from deepkmeans.report.sweep import write_sweep

    check_writable(Path(out_dir) / "sweep.json")
    loaded = load_model_file(checkpoint)
    dataset = loaded.dataset or cfg.dataset
    _, test = load_data(dataset, cfg.data_dir, 256, cfg.seed)
    meta = model_meta(cfg, dataset) | {"name": loaded.name}
    points = sweep(
        loaded.model, test, pick_device(cfg.device), cfg.compress, scales, p_offsets, model_meta=meta, on_point=on_point
    )
    return write_sweep(points, out_dir, loaded.name, dataset)
