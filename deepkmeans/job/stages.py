"""The stages a run is made of -- pre-train, Deep k-Means re-train, compress and measure, center fine-tune -- as
library calls the run job, the command line's verbs and the benchmarks share."""

from __future__ import annotations

import copy
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
from deepkmeans.errors import ConfigError, DeepKMeansError, PlanWarning
from deepkmeans.importance import squared_gradients
from deepkmeans.lifecycle import DeepKMeans
from deepkmeans.measure import Measurement, measure
from deepkmeans.models import build_model
from deepkmeans.plan import build_plan
from deepkmeans.shared import snap_
from deepkmeans.train import EpochLog, Loop, fit, pick_device


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
    loop = Loop(splits.train, splits.test, device, rank.is_main, progress, val=splits.val)
    return Session(rank, loop, splits.val)


def require_layers(cfg: RunConfig, verb: str) -> None:
    """Refuse a config that names no layer to share for a verb whose point is compression: it would write a
    1.0x file. Omitted sections of a config file take the dataclass defaults, and a default set of layers
    would have to name one architecture's modules, so ``compress.layers`` has none."""
    if not cfg.compress.layers:
        raise ConfigError(
            f"compress.layers names no layer, so `deepkmeans {verb}` would compress nothing; name the layers to"
            " share (by name, glob pattern or type:Class), as configs/lenet5_mnist.yaml does"
        )


def check_plan(model: nn.Module, cfg: RunConfig) -> None:
    """Resolve the plan of ``cfg.compress`` on ``model`` now, so that a layer-name typo or a row length that does
    not divide a weight ends in one line before the data is loaded or any training starts."""
    build_plan(model, cfg.compress)


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
        inputs={"compress": to_dict(cfg.compress)},
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
    """Compress ``model`` (:func:`compress_step`), write it, read it back and evaluate what was read (on the test
    set, and on ``val`` when given). ``dkm``: the run's :func:`lifecycle` on ``model``, whose clusterings of the
    current weights are reused."""
    shared = compress_step(model, cfg, loop.train, loop.device, dkm)
    return shared, measure(shared, loop.test, loop.device, save_to=path, meta=meta, val=val)


def compress_step(
    model: nn.Module,
    cfg: RunConfig,
    train: Batches | None,
    device: torch.device,
    dkm: DeepKMeans | None = None,
) -> nn.Module:
    """The compressed model as every verb makes it: a CPU copy of ``model`` (the clustering runs on the CPU, so
    the file does not depend on the device) with ``cfg.compress``, its k-means weighted by squared gradients
    over ``cfg.importance`` training batches and its BatchNorm statistics re-measured on ``cfg.bn_reestimate``
    of them; ``train`` (batches on ``device``, where ``model`` is) is needed only when either is > 0."""
    dkm = dkm if dkm is not None else DeepKMeans(model, cfg.compress)
    if train is None and (cfg.importance > 0 or cfg.bn_reestimate > 0):
        raise DeepKMeansError("importance and bn_reestimate need training batches")
    importance = None
    if cfg.importance > 0:
        importance = squared_gradients(model, train, device, list(dkm.plan.shared), cfg.importance)
    shared = dkm.finalize(importance=importance).cpu()
    if cfg.bn_reestimate > 0 and reestimate_batchnorm_(shared, train, device, cfg.bn_reestimate) == 0:
        warnings.warn(
            f"bn_reestimate = {cfg.bn_reestimate}, but the model has no BatchNorm layer to re-estimate",
            PlanWarning,
            stacklevel=3,
        )
    return shared


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
