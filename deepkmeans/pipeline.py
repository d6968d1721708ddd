"""The main job: pre-train -> compress (no re-training) -> Deep k-Means re-train -> compress -> evaluate."""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepkmeans import distributed
from deepkmeans.calibrate import reestimate_batchnorm_
from deepkmeans.config import RunConfig, to_dict
from deepkmeans.data import Batches, load_splits
from deepkmeans.energy.report import plot_breakdown
from deepkmeans.energy.torch_layers import estimate_energy
from deepkmeans.errors import DeepKMeansError, PlanWarning
from deepkmeans.fileio import check_writable
from deepkmeans.files import load_model_file
from deepkmeans.importance import squared_gradients
from deepkmeans.lifecycle import DeepKMeans
from deepkmeans.measure import Measurement, measure
from deepkmeans.models import build_model, model_info
from deepkmeans.report.markdown import write_report
from deepkmeans.report.tables import layer_table, ratio_summary
from deepkmeans.runs import DenseMetrics, EnergyLayer, EnergySummary, RunFiles, RunMetrics, StageMetrics
from deepkmeans.shared import snap_
from deepkmeans.train import EpochLog, Loop, evaluate, fit, pick_device

QUICK_LIMIT = 6000


@dataclass
class Session:
    """Where a command runs: this process's rank, its device and (sharded) data, and the validation split."""

    rank: distributed.Rank
    loop: Loop
    val: Batches | None = None

    @property
    def device(self) -> torch.device:
        return self.loop.device


def start_session(
    cfg: RunConfig, batch_size: int, limit: int | None = None, dataset: str | None = None, progress: bool | None = None
) -> Session:
    """Join torchrun if launched by it, pick the device, load the data and shard it across ranks."""
    rank, device = distributed.setup(pick_device(cfg.device))
    splits = load_splits(dataset or cfg.dataset, cfg.data_dir, batch_size, cfg.seed, limit, cfg.validation)
    splits.train.set_shard(rank.rank, rank.world_size)
    return Session(rank, Loop(splits.train, splits.test, device, rank.is_main, progress), splits.val)


def model_meta(cfg: RunConfig, dataset: str | None = None) -> dict[str, Any]:
    """What a compressed file records of its model (``name`` rebuilds the architecture on load)."""
    return {"name": cfg.model, "dataset": dataset or cfg.dataset}


def checkpoint_meta(model: str | None, dataset: str | None, validation: int) -> dict[str, Any]:
    """What a training checkpoint records: the architecture ``load_model_file`` rebuilds (``name``, the key
    compressed files use too), its dataset, and the number of last training images held out of its training
    (``tune`` checks it)."""
    return {"name": model, "dataset": dataset, "validation": validation}


def pretrain(cfg: RunConfig, session: Session, checkpoint: Path) -> tuple[nn.Module, list[EpochLog]]:
    """Pre-train a fresh model (seeded); resumes from ``checkpoint`` when it holds the same run."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(session.device)
    wrapped = distributed.wrap(model, session.rank, session.device)
    meta = checkpoint_meta(cfg.model, cfg.dataset, cfg.validation)
    log = fit(wrapped, session.loop, cfg.train, stage="pretrain", checkpoint=checkpoint, meta=meta)
    return model, log


def _retrain_loop(cfg: RunConfig, session: Session) -> Loop:
    return replace(session.loop, train=session.loop.train.with_batch_size(cfg.retrain.batch_size))


def lifecycle(cfg: RunConfig, model: nn.Module, session: Session) -> DeepKMeans:
    """The run's one Deep k-Means object on ``model``: its plan, its clusterings (each k-means once per weight
    version) and, when the run re-trains, its penalty."""
    regularizer = None
    if cfg.retrain.epochs > 0:
        regularizer = cfg.retrain.regularizer_for(len(_retrain_loop(cfg, session).train))
    return DeepKMeans(model.to(session.device), cfg.compress, regularizer)


def retrain(
    cfg: RunConfig,
    model: nn.Module,
    session: Session,
    checkpoint: Path,
    meta: dict[str, Any],
    verbose: bool = False,
    dkm: DeepKMeans | None = None,
) -> tuple[list[EpochLog], DeepKMeans]:
    """Deep k-Means re-training of ``model`` in place, tracking each layer's hardness per epoch; with
    ``retrain.distill.weight > 0`` it also distils a frozen copy of ``model`` as it was before (the dense model).
    ``dkm``: the run's :func:`lifecycle` on ``model`` (default: a new one)."""
    rcfg = cfg.retrain
    model.to(session.device)
    teacher = frozen_copy(model) if rcfg.distill.weight > 0 else None
    loop = _retrain_loop(cfg, session)
    dkm = dkm if dkm is not None else lifecycle(cfg, model, session)
    if dkm.model is not model:
        raise DeepKMeansError("retrain needs the lifecycle of the model it re-trains")

    def track(_: nn.Module, log: EpochLog) -> None:
        log.extra["hardness"] = {r.name: r.hardness for r in dkm.report()}
        if verbose and session.rank.is_main:
            print("  hardness " + ", ".join(f"{k} {v:.4f}" for k, v in log.extra["hardness"].items()))

    log = fit(
        distributed.wrap(model, session.rank, session.device),
        loop,
        rcfg,
        stage=f"retrain[{rcfg.method}]",
        checkpoint=checkpoint,
        dkm=dkm,
        on_epoch=track,
        meta=meta,
        teacher=teacher,
        distill=rcfg.distill,
    )
    return log, dkm


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with no trainable parameter: a distillation teacher."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def compress_and_measure(
    model: nn.Module,
    cfg: RunConfig,
    loop: Loop,
    path: Path,
    meta: dict[str, Any],
    val: Batches | None = None,
    dkm: DeepKMeans | None = None,
) -> tuple[nn.Module, Measurement]:
    """Compress ``model`` (a CPU copy; the clustering runs on the CPU, so the file does not depend on the
    device), write it, read it back and evaluate what was read (on the test set, and on ``val`` when given).
    ``dkm``: the run's :func:`lifecycle` on ``model``, whose clusterings of the current weights are reused."""
    dkm = dkm if dkm is not None else DeepKMeans(model, cfg.compress)
    importance = None
    if cfg.importance > 0:
        importance = squared_gradients(model, loop.train, loop.device, list(dkm.plan.shared), cfg.importance)
    shared = dkm.finalize(importance=importance).cpu()
    if cfg.bn_reestimate > 0 and reestimate_batchnorm_(shared, loop.train, loop.device, cfg.bn_reestimate) == 0:
        warnings.warn(
            f"bn_reestimate = {cfg.bn_reestimate}, but the model has no BatchNorm layer to re-estimate",
            PlanWarning,
            stacklevel=2,
        )
    return shared, measure(shared, loop.test, loop.device, save_to=path, meta=meta, val=val)


def finetune(
    cfg: RunConfig,
    compressed: nn.Module,
    loop: Loop,
    checkpoint: Path,
    meta: dict[str, Any],
    teacher: nn.Module | None = None,
) -> list[EpochLog]:
    """Center fine-tuning of a compressed model in place: its shared layers keep their assignments, the centers,
    biases and BatchNorm train (the gather in each shared layer sums a center's gradient over its rows). Centers
    and biases stored below 32 bits are rounded to their width afterwards (the forward pass already saw them so).
    ``teacher`` (the dense model) is distilled when ``finetune.distill.weight > 0``; it is required then."""
    fcfg = cfg.finetune
    if fcfg.distill.weight > 0 and teacher is None:
        raise DeepKMeansError("finetune.distill.weight > 0 needs a teacher (the dense model)")
    loop = replace(loop, train=loop.train.with_batch_size(fcfg.batch_size))
    log = fit(
        compressed.to(loop.device),
        loop,
        fcfg,
        stage="finetune",
        checkpoint=checkpoint,
        meta=meta,
        teacher=teacher,
        distill=fcfg.distill,
    )
    snap_(compressed)
    return log


def _energy(files: RunFiles, final: StageMetrics, input_shape: tuple[int, ...]) -> EnergySummary:
    result = estimate_energy(load_model_file(files / final.file).model, input_shape)
    plot_breakdown(result, files / RunFiles.ENERGY_PLOT)
    layers = [
        EnergyLayer(
            le.layer.name,
            float(le.layer.macs),
            None if le.unique_macs is None else float(le.unique_macs),
            le.dense.total,
            None if le.shared is None else le.shared.total,
            le.ratio,
        )
        for le in result.layers
    ]
    return EnergySummary(result.dense_total, result.shared_total, result.ratio, layers)


def _quick(cfg: RunConfig) -> RunConfig:
    return replace(
        cfg,
        train=replace(cfg.train, epochs=min(cfg.train.epochs, 1)),
        retrain=replace(cfg.retrain, epochs=min(cfg.retrain.epochs, 1)),
        finetune=replace(cfg.finetune, epochs=min(cfg.finetune.epochs, 1)),
    )


def run(cfg: RunConfig, quick: bool = False, progress: bool | None = None) -> RunMetrics | None:
    """Run the whole pipeline into ``cfg.out_dir``; returns the metrics also written to metrics.json.

    Under ``torchrun`` the two training stages run data-parallel (DDP); rank 0 alone compresses, evaluates
    and writes the report (other ranks return ``None``).
    """
    files = RunFiles(Path(cfg.out_dir))
    check_writable(files / RunFiles.METRICS)
    cfg = _quick(cfg) if quick else cfg
    started = time.perf_counter()
    session = start_session(cfg, cfg.train.batch_size, QUICK_LIMIT if quick else None, progress=progress)
    rank, loop = session.rank, session.loop
    if rank.is_main:
        print(
            f"deepkmeans run: {cfg.model} on {cfg.dataset} ({len(loop.train.x)} train / {len(loop.test.x)} test"
            f" images), device {loop.device}, {rank.world_size} process(es), output {files.root}"
        )
    meta = model_meta(cfg)
    model, pretrain_log = pretrain(cfg, session, files / RunFiles.PRETRAIN)
    dense_loss, dense_acc = evaluate(model, loop.test, loop.device)
    val = session.val
    dense_val = None if val is None else evaluate(model, val, loop.device)[1]
    stages: list[StageMetrics] = []
    dkm = lifecycle(cfg, model, session)
    hardness = {"0": {r.name: r.hardness for r in dkm.report()}}
    if rank.is_main:
        print(f"dense model: test accuracy {100 * dense_acc:.2f}% (loss {dense_loss:.4f}){_val_text(dense_val)}")
        _, m = compress_and_measure(model, cfg, loop, files / RunFiles.NO_RETRAIN, meta, val, dkm)
        stages.append(StageMetrics.of("compressed, no re-training", RunFiles.PRETRAIN, m))
        print(
            f"compressed without re-training: test accuracy {100 * m.test_acc:.2f}%{_val_text(m.val_acc)},"
            f" paper CR {m.paper_cr:.1f}x, file CR {m.file_cr:.1f}x"
        )
        final = m
    distill_dense = cfg.finetune.distill.weight > 0 and cfg.finetune.epochs > 0 and rank.is_main
    dense = frozen_copy(model) if distill_dense else None  # the fine-tuning teacher: re-training changes ``model``
    retrain_log: list[EpochLog] = []
    if cfg.retrain.epochs > 0:
        ckpt_meta = checkpoint_meta(cfg.model, cfg.dataset, cfg.validation)
        retrain_log, _ = retrain(cfg, model, session, files / RunFiles.RETRAIN, ckpt_meta, dkm=dkm)
        hardness.update({str(e.epoch): e.extra["hardness"] for e in retrain_log})
        if rank.is_main:
            _, final = compress_and_measure(model, cfg, loop, files / RunFiles.MODEL, meta, val, dkm)
            label = f"re-trained ({cfg.retrain.method}) + compressed"
            stages.append(StageMetrics.of(label, RunFiles.RETRAIN, final))
            print(f"{label}: test accuracy {100 * final.test_acc:.2f}%{_val_text(final.val_acc)}")
    if not rank.is_main:
        distributed.barrier()
        return None
    finetune_log: list[EpochLog] = []
    if cfg.finetune.epochs > 0:
        compressed = load_model_file(files / stages[-1].file).model
        finetune_log = finetune(cfg, compressed, loop, files / RunFiles.FINETUNE, meta, teacher=dense)
        final = measure(compressed, loop.test, loop.device, save_to=files / RunFiles.FINETUNED, meta=meta, val=val)
        stages.append(StageMetrics.of(f"{stages[-1].label}, centers fine-tuned", stages[-1].source, final))
        print(
            f"{stages[-1].label}: test accuracy {100 * final.test_acc:.2f}%{_val_text(final.val_acc)} (same file size)"
        )
    print(layer_table(final.accounting) + "\n\n" + ratio_summary(final.accounting))
    energy = _energy(files, stages[-1], model_info(cfg.model).input_shape)
    print(
        f"energy (row-stationary model, batch 1): dense {energy.dense:.4g},"
        f" shared {energy.shared:.4g} (1 = one 16-bit MAC): {energy.ratio:.2f}x less"
    )
    print(_summary(dense_acc, dense_val, stages))
    metrics = RunMetrics(
        config=to_dict(cfg),
        quick=quick,
        device=str(loop.device),
        world_size=rank.world_size,
        seconds=time.perf_counter() - started,
        dense=DenseMetrics(dense_acc, dense_loss, dense_val),
        stages=stages,
        hardness=hardness,
        pretrain_log=pretrain_log,
        retrain_log=retrain_log,
        finetune_log=finetune_log,
        energy=energy,
    )
    path = metrics.write(files)
    report = write_report(files.root)
    print(f"wrote {path} and {report} ({metrics.seconds:.0f}s)")
    distributed.barrier()
    return metrics


def _val_text(val_acc: float | None) -> str:
    return "" if val_acc is None else f", validation accuracy {100 * val_acc:.2f}%"


def _summary(dense_acc: float, dense_val: float | None, stages: list[StageMetrics]) -> str:
    def val(acc: float | None) -> str:
        return "" if acc is None else f"  validation {100 * acc:6.2f}%"

    lines = ["", "summary (accuracy of the model decompressed from its file):"]
    lines.append(f"  {'dense':<36} test accuracy {100 * dense_acc:6.2f}%{val(dense_val)}")
    for s in stages:
        ratios = f"paper CR {s.paper_cr:6.1f}x  file CR {s.file_cr:6.1f}x"
        lines.append(f"  {s.label:<36} test accuracy {100 * s.test_acc:6.2f}%{val(s.val_acc)}  {ratios}")
    lines.append(
        "  decompressed weights bit-identical to the in-memory weight-shared model: "
        + ("yes" if stages[-1].bitwise_equal else "NO")
    )
    return "\n".join(lines)
