"""The command line's verbs as library calls on files: each takes paths and configs and returns typed results."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from deepkmeans.accounting import Accounting, account
from deepkmeans.config import DATASETS, RunConfig, to_dict
from deepkmeans.data import load_data, load_splits
from deepkmeans.energy.rs import EnergyResult
from deepkmeans.energy.torch_layers import estimate_energy
from deepkmeans.errors import DeepKMeansError, PlanWarning
from deepkmeans.files.atomic import check_writable, write_atomic
from deepkmeans.files.models import LoadedModel, load_model_file, save
from deepkmeans.job.stages import (
    check_plan,
    checkpoint_meta,
    compress_step,
    model_meta,
    pretrain,
    require_layers,
    retrain,
    start_session,
)
from deepkmeans.lifecycle import DeepKMeans
from deepkmeans.measure import Measurement, measure
from deepkmeans.models import build_model, model_info
from deepkmeans.sweep import SweepPoint, run_points, sweep
from deepkmeans.train import EpochLog, pick_device

if TYPE_CHECKING:
    from deepkmeans.export import OnnxExport
    from deepkmeans.tuning import Grid, TuneResult


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


@dataclass(frozen=True)
class Imported:
    """A state dict turned into a checkpoint the other verbs take."""

    path: Path
    model: str
    dataset: str
    parameters: int
    source: str


def import_weights(source: str, output: str | Path, model: str | None = None, dataset: str | None = None) -> Imported:
    """Write a training checkpoint (architecture named, no images held out) from ``source``: the name of
    third-party weights in :data:`deepkmeans.weights.WEIGHTS`, or a ``.safetensors`` / ``torch.save`` state dict
    of the zoo architecture ``model``. Then ``tune``, ``retrain``, ``compress`` and ``evaluate`` take it."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from deepkmeans.files.checkpoints import save_checkpoint
    from deepkmeans.weights import WEIGHTS, fit_model, pretrained_state, read_state_dict

    if dataset is not None and dataset not in DATASETS:
        raise DeepKMeansError(f"unknown dataset {dataset!r} (--dataset); known: {', '.join(DATASETS)}")
    if model is not None:
        model_info(model)  # an unknown architecture fails here, naming the known ones
    check_writable(output)
    if source in WEIGHTS:
        info = WEIGHTS[source]
        if model not in (None, info.model):
            raise DeepKMeansError(f"weights {source} are a {info.model}, not a {model}; leave out --model")
        model, dataset, where = info.model, dataset or info.dataset, info.source
        state = pretrained_state(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise DeepKMeansError(f"{source}: neither a file nor known weights ({', '.join(sorted(WEIGHTS))})")
        if model is None:
            raise DeepKMeansError(f"{source}: name its architecture with --model (one of the built-in models)")
        raw = path.read_bytes()
        if path.suffix == ".safetensors":
            try:
                state = load_safetensors(raw)
            except (SafetensorError, ValueError) as exc:
                raise DeepKMeansError(f"{source}: not a readable safetensors file ({exc})") from None
        else:
            state = read_state_dict(raw, source)
        dataset, where = dataset or model_info(model).dataset, str(path)
    fitted = fit_model(model, state, source)
    meta = {**checkpoint_meta(model, dataset, 0), "source": where}
    save_checkpoint(output, {"stage": "import", "model": fitted.state_dict(), "meta": meta})
    count = sum(t.numel() for t in fitted.state_dict().values())
    return Imported(Path(output), model, dataset, count, where)


def retrain_checkpoint(checkpoint: str | Path, cfg: RunConfig, output: str | Path) -> list[EpochLog]:
    """Deep k-Means re-training of a checkpoint into ``output``, printing each layer's hardness per epoch."""
    check_writable(output)
    if cfg.retrain.method != "none":  # the penalty pulls towards the plan's centers: without layers it is zero
        require_layers(cfg, "retrain")
    loaded = _checkpoint(checkpoint)
    check_plan(loaded.model, cfg)  # a layer-name typo or a d that does not divide: now, not after loading data
    session = start_session(cfg, cfg.retrain.batch_size, dataset=loaded.dataset)
    # images held out of both stages: both hold out the last ones, so the smaller count
    held_out = min(int(loaded.meta.get("validation", 0)), cfg.validation)
    meta = checkpoint_meta(loaded.name, loaded.dataset, held_out)
    log, _ = retrain(cfg, loaded.model, session, Path(output), meta, verbose=True)
    return log


def compress_checkpoint(checkpoint: str | Path, cfg: RunConfig, output: str | Path) -> Accounting:
    """Weight-share a checkpoint with ``cfg.compress`` as ``run`` does (``importance`` and ``bn_reestimate``
    included: the training data is loaded only when one of them is > 0) and write the compressed file; returns
    its accounting."""
    check_writable(output)
    require_layers(cfg, "compress")
    loaded = _checkpoint(checkpoint)
    model, train, device = loaded.model.cpu(), None, torch.device("cpu")
    dkm = DeepKMeans(model, cfg.compress)  # the plan, checked before any data is loaded
    if cfg.importance > 0 or cfg.bn_reestimate > 0:
        session = start_session(cfg, cfg.train.batch_size, dataset=loaded.dataset)
        train, device = session.loop.train, session.device
        model.to(device)
    shared = compress_step(model, cfg, train, device, dkm)
    size = save(shared, output, {"name": loaded.name, "dataset": loaded.dataset})
    return account(shared, size)


def ignored_options(cfg: RunConfig, verb: str) -> None:
    """Warn, in one line, of ``importance`` / ``bn_reestimate`` given to a verb that compresses without them."""
    given = [f"{k} = {v}" for k, v in (("importance", cfg.importance), ("bn_reestimate", cfg.bn_reestimate)) if v]
    if given:
        warnings.warn(
            f"{' and '.join(given)}: `deepkmeans {verb}` compresses without them (`compress` and `run` apply them)",
            PlanWarning,
            stacklevel=3,
        )


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


@dataclass(frozen=True)
class Finetuning:
    """A compressed file before and after center fine-tuning, at the same size."""

    before: Measurement
    after: Measurement
    log: list[EpochLog]


def finetune_file(
    path: str | Path, cfg: RunConfig, output: str | Path, teacher: str | Path | None = None
) -> Finetuning:
    """Fine-tune the centers of a compressed file (assignments fixed) and write the result: same file size.
    ``teacher``: the dense checkpoint the file was compressed from, needed when ``finetune.distill.weight > 0``."""
    from deepkmeans.job.stages import finetune, frozen_copy

    if cfg.finetune.distill.weight > 0 and teacher is None:
        raise DeepKMeansError(
            "fine-tuning a file with distillation (finetune.distill.weight > 0) needs the dense checkpoint;"
            " it is available through `deepkmeans run`"
        )
    check_writable(output)
    loaded = load_model_file(path)
    if not loaded.compressed:
        raise DeepKMeansError(f"{path}: is a checkpoint; finetune takes a compressed file (.dkm)")
    dense = None if teacher is None else frozen_copy(_checkpoint(teacher).model)
    session = start_session(cfg, cfg.finetune.batch_size, dataset=loaded.dataset)
    loop, meta = session.loop, {"name": loaded.name, "dataset": loaded.dataset}
    before = measure(loaded.model, loop.test, loop.device, file_bytes=loaded.file_bytes)
    log = finetune(cfg, loaded.model, loop, Path(output).with_suffix(".ckpt"), meta, teacher=dense)
    after = measure(loaded.model, loop.test, loop.device, save_to=output, meta=meta)
    return Finetuning(before, after, log)


def tune_checkpoint(
    checkpoint: str | Path,
    cfg: RunConfig,
    output: str | Path,
    target_cr: float | None,
    max_drop: float | None,
    validation: int,
    grid: Grid | None = None,
) -> TuneResult:
    """Choose per-layer K / p / d for a checkpoint on the last ``validation`` training images; writes a run config
    (``cfg`` with the chosen layers and the validation split) that run, retrain and compress accept."""
    from deepkmeans.tuning import Grid, check_reachable, sensitivity_table, tune

    check_writable(output)
    ignored_options(cfg, "tune")
    loaded = _checkpoint(checkpoint)
    grid = grid or Grid()
    if target_cr is not None:
        check_reachable(loaded.model, target_cr, grid)  # before the data is loaded and any candidate measured
    trained_without = loaded.meta.get("validation", 0)
    if trained_without != validation:
        warnings.warn(
            f"{checkpoint} was trained with validation = {trained_without}, tune uses the last {validation} training"
            " images: the sensitivities are measured on images the model has seen (set validation in the config"
            " that trains it)",
            PlanWarning,
            stacklevel=2,
        )
    # the written config rebuilds the checkpoint's architecture on its data, not the defaults' (run reads it)
    model = loaded.name if isinstance(loaded.name, str) else cfg.model
    cfg = replace(cfg, validation=validation, model=model, dataset=loaded.dataset or cfg.dataset)
    splits = load_splits(cfg.dataset, cfg.data_dir, 256, cfg.seed, validation=validation)
    result = tune(
        loaded.model,
        splits.val,
        pick_device(cfg.device),
        target_cr=target_cr,
        max_drop=max_drop,
        seed=cfg.compress.seed,
        grid=grid,
    )
    tuned = replace(cfg, compress=result.config)
    write_atomic(output, yaml.safe_dump(to_dict(tuned), sort_keys=False).encode())
    write_atomic(Path(output).with_suffix(".sensitivity.md"), (sensitivity_table(result) + "\n").encode())
    return result


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
    runs: Sequence[str | Path] = (),
) -> Path:
    """Accuracy vs compression ratio of one checkpoint over a K / p grid, plus the compressed models of the
    given run folders; writes sweep.json / .md / .png."""
    from deepkmeans.report.sweep import write_sweep

    check_writable(Path(out_dir) / "sweep.json")
    require_layers(cfg, "sweep")
    ignored_options(cfg, "sweep")
    loaded = load_model_file(checkpoint)
    dataset = loaded.dataset or cfg.dataset
    _, test = load_data(dataset, cfg.data_dir, 256, cfg.seed)
    meta = model_meta(cfg, dataset) | {"name": loaded.name}
    points = sweep(
        loaded.model, test, pick_device(cfg.device), cfg.compress, scales, p_offsets, model_meta=meta, on_point=on_point
    )
    points += [point for run in runs for point in run_points(run)]
    return write_sweep(points, out_dir, loaded.name, dataset)
