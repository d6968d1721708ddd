"""The main job: pre-train -> compress (no re-training) -> Deep k-Means re-train -> compress -> evaluate."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepkmeans import api, distributed
from deepkmeans.cluster.quantize import hardness
from deepkmeans.compress import ResolvedSpec, cluster_layer, layer_seed, resolve_specs, shareable_layers
from deepkmeans.config import RunConfig, to_dict
from deepkmeans.data import Batches, load_data
from deepkmeans.fileio import write_atomic
from deepkmeans.models import build_model, model_info
from deepkmeans.regularize.regularizer import KMeansRegularizer
from deepkmeans.report.markdown import write_report
from deepkmeans.report.tables import layer_table, ratio_summary
from deepkmeans.train import EpochLog, evaluate, fit, pick_device

QUICK_LIMIT = 6000


def layer_hardness(model: nn.Module, specs: dict[str, ResolvedSpec], seed: int) -> dict[str, float]:
    """||W - Q(W)||_F / ||W||_F per layer, with Q the exact compression step."""
    modules = shareable_layers(model)
    out = {}
    for name, spec in specs.items():
        weight = modules[name].weight.detach().float()
        code = cluster_layer(weight, spec, layer_seed(seed, name))
        out[name] = 0.0 if code is None else hardness(weight, code.weight().to(weight))
    return out


@dataclass
class StageResult:
    """Accuracy and sizes of one compressed model."""

    test_acc: float
    test_loss: float
    paper_cr: float
    file_cr: float
    file_bytes: int
    path: str
    bitwise_equal: bool  # decompressed weights == in-memory weight-shared model, bit for bit
    index_bits: int  # real rANS streams, all layers
    index_bits_ideal: float  # sum of N*H


def compress_and_measure(
    model: nn.Module, cfg: RunConfig, test: Batches, device: torch.device, path: Path
) -> tuple[StageResult, str]:
    """Compress a copy of ``model``, write the file, reload it from disk and evaluate the reloaded model."""
    shared = copy.deepcopy(model).cpu()
    cm = api.compress(shared, cfg.compress, {"name": cfg.model, "dataset": cfg.dataset})
    size = api.save(cm, path)
    reloaded = api.load(path)
    before, after = shared.state_dict(), reloaded.state_dict()
    same = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    loss, acc = evaluate(reloaded.to(device), test, device)
    accounting = api.account(shared, cm, size)
    table = layer_table(accounting) + "\n\n" + ratio_summary(accounting)
    result = StageResult(
        acc,
        loss,
        accounting.paper_cr,
        accounting.file_cr or 0.0,
        size,
        str(path),
        same,
        accounting.index_bits,
        accounting.index_bits_ideal,
    )
    return result, table


@dataclass
class Session:
    """Where a command runs: this process's rank and device, and its (sharded) data."""

    rank: distributed.Rank
    device: torch.device
    train: Batches
    test: Batches


def start_session(cfg: RunConfig, batch_size: int, limit: int | None = None, dataset: str | None = None) -> Session:
    """Join torchrun if launched by it, pick the device, load the data and shard it across ranks."""
    rank, device = distributed.setup(pick_device(cfg.device))
    train, test = load_data(dataset or cfg.dataset, cfg.data_dir, batch_size, cfg.seed, limit)
    train.set_shard(rank.rank, rank.world_size)
    return Session(rank, device, train, test)


def pretrain(cfg: RunConfig, session: Session, checkpoint: Path, progress: bool = True) -> tuple[nn.Module, list]:
    """Pre-train a fresh model (seeded); resumes from ``checkpoint`` when it holds the same run."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(session.device)
    log = fit(
        distributed.wrap(model, session.rank, session.device),
        session.train,
        session.test,
        cfg.train,
        session.device,
        checkpoint,
        meta={"model": cfg.model, "dataset": cfg.dataset},
        desc="pretrain",
        progress=progress,
        is_main=session.rank.is_main,
    )
    return model, log


def retrain(
    cfg: RunConfig,
    model: nn.Module,
    session: Session,
    checkpoint: Path,
    meta: dict[str, Any],
    progress: bool = True,
    verbose: bool = False,
) -> list[EpochLog]:
    """Deep k-Means re-training of ``model`` in place, tracking each layer's hardness per epoch."""
    rcfg = cfg.retrain
    model.to(session.device)
    specs = resolve_specs(model, cfg.compress.layers)
    reg = None
    if rcfg.method != "none":
        reg = KMeansRegularizer(
            model, cfg.compress.layers, rcfg.method, rcfg.lam, rcfg.refresh_every, cfg.compress.seed
        )

    def track(m: nn.Module, log: EpochLog) -> None:
        log.extra["hardness"] = layer_hardness(m, specs, cfg.compress.seed)
        if verbose and session.rank.is_main:
            print("  hardness " + ", ".join(f"{k} {v:.4f}" for k, v in log.extra["hardness"].items()))

    session.train.batch_size = rcfg.batch_size
    return fit(
        distributed.wrap(model, session.rank, session.device),
        session.train,
        session.test,
        rcfg,
        session.device,
        checkpoint,
        regularizer=reg,
        on_epoch=track,
        meta=meta,
        desc=f"retrain[{rcfg.method}]",
        progress=progress,
        is_main=session.rank.is_main,
    )


def run(cfg: RunConfig, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline into ``cfg.out_dir``; returns the metrics also written to metrics.json.

    Under ``torchrun`` the two training stages run data-parallel (DDP); rank 0 alone compresses,
    evaluates and writes the report.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        cfg = replace(
            cfg,
            train=replace(cfg.train, epochs=min(cfg.train.epochs, 1)),
            retrain=replace(cfg.retrain, epochs=min(cfg.retrain.epochs, 1)),
        )
    started = time.perf_counter()
    session = start_session(cfg, cfg.train.batch_size, QUICK_LIMIT if quick else None)
    rank, device, test = session.rank, session.device, session.test
    if rank.is_main:
        print(
            f"deepkmeans run: {cfg.model} on {cfg.dataset} ({len(session.train.x)} train / {len(test.x)} test"
            f" images), device {device}, {rank.world_size} process(es), output {out}"
        )
    meta = {"model": cfg.model, "dataset": cfg.dataset}
    model, pretrain_log = pretrain(cfg, session, out / "pretrain.ckpt", progress)
    specs = resolve_specs(model, cfg.compress.layers)
    dense_loss, dense_acc = evaluate(model, test, device)
    base = final = None
    if rank.is_main:
        print(f"dense model: test accuracy {100 * dense_acc:.2f}% (loss {dense_loss:.4f})")
        base, final_table = compress_and_measure(model, cfg, test, device, out / "no_retrain.dkm")
        final = base
        print(
            f"compressed without re-training: test accuracy {100 * base.test_acc:.2f}%,"
            f" paper CR {base.paper_cr:.1f}x, file CR {base.file_cr:.1f}x"
        )

    retrain_log: list[EpochLog] = []
    hard0 = layer_hardness(model, specs, cfg.compress.seed)
    if cfg.retrain.epochs > 0:
        retrain_log = retrain(cfg, model, session, out / "retrain.ckpt", meta, progress)
        if rank.is_main:
            final, final_table = compress_and_measure(model, cfg, test, device, out / "model.dkm")
            print(f"re-trained ({cfg.retrain.method}) + compressed: test accuracy {100 * final.test_acc:.2f}%")
    if not rank.is_main:
        distributed.barrier()
        return {}
    print(final_table)
    from deepkmeans.energy import plot_breakdown, result_to_dict

    shared_model, _, final_cm = api.load_model_file(final.path)
    result = api.estimate_energy(shared_model, model_info(cfg.model).input_shape, final_cm)
    plot_breakdown(result, out / "energy.png")
    energy = result_to_dict(result)
    print(
        f"energy (row-stationary model, batch 1): dense {result.dense_total:.4g},"
        f" shared {result.shared_total:.4g} (1 = one 16-bit MAC): {result.ratio:.2f}x less"
    )
    print(_summary(cfg, dense_acc, base, final if retrain_log else None))

    metrics = {
        "config": to_dict(cfg),
        "quick": quick,
        "device": str(device),
        "world_size": rank.world_size,
        "dense": {"test_acc": dense_acc, "test_loss": dense_loss},
        "compressed_no_retrain": asdict(base),
        "compressed": asdict(final),
        "hardness_before_retrain": hard0,
        "pretrain_log": [asdict(e) for e in pretrain_log],
        "retrain_log": [asdict(e) for e in retrain_log],
        "energy": energy,
        "seconds": time.perf_counter() - started,
    }
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    report = write_report(out)
    print(f"wrote {out / 'metrics.json'} and {report} ({metrics['seconds']:.0f}s)")
    distributed.barrier()
    return metrics


def _summary(cfg: RunConfig, dense_acc: float, base: StageResult, final: StageResult | None) -> str:
    rows = [("dense", dense_acc, None), ("compressed, no re-training", base.test_acc, base)]
    if final is not None:
        rows.append((f"re-trained ({cfg.retrain.method}) + compressed", final.test_acc, final))
    lines = ["", "summary (accuracy of the model decompressed from its file):"]
    for label, acc, res in rows:
        ratios = "" if res is None else f"  paper CR {res.paper_cr:6.1f}x  file CR {res.file_cr:6.1f}x"
        lines.append(f"  {label:<36} test accuracy {100 * acc:6.2f}%{ratios}")
    last = final or base
    lines.append(
        "  decompressed weights bit-identical to the in-memory weight-shared model: "
        + ("yes" if last.bitwise_equal else "NO")
    )
    return "\n".join(lines)
