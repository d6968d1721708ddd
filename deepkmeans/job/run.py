"""The main job: pre-train -> compress (no re-training) -> Deep k-Means re-train -> compress -> fine-tune ->
evaluate, into one run folder."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from deepkmeans import distributed
from deepkmeans.config import RunConfig, to_dict
from deepkmeans.energy.report import plot_breakdown
from deepkmeans.energy.torch_layers import estimate_energy
from deepkmeans.files.atomic import check_writable
from deepkmeans.files.models import load_model_file
from deepkmeans.job.stages import (
    check_plan,
    checkpoint_meta,
    compress_and_measure,
    finetune,
    frozen_copy,
    lifecycle,
    model_meta,
    pretrain,
    require_layers,
    retrain,
    start_session,
)
from deepkmeans.measure import measure
from deepkmeans.models import build_model, model_info
from deepkmeans.report.markdown import write_report
from deepkmeans.report.tables import layer_table, ratio_summary
from deepkmeans.results import DenseMetrics, EnergyLayer, EnergySummary, RunFiles, RunMetrics, StageMetrics
from deepkmeans.train import EpochLog, evaluate

QUICK_LIMIT = 6000


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
    require_layers(cfg, "run")
    check_plan(build_model(cfg.model), cfg)  # before pre-training: its mistakes cost nothing to report now
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
