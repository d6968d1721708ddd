"""Training loops (pre-training, Deep k-Means re-training, center fine-tuning) with atomic, resumable checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from deepkmeans.config import DistillConfig, TrainConfig
from deepkmeans.data import Batches
from deepkmeans.distill import distillation_loss
from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.checkpoints import load_checkpoint, save_checkpoint


class Lifecycle(Protocol):
    """What the training loop needs from :class:`deepkmeans.DeepKMeans`."""

    active: bool
    in_loss: bool

    def penalty(self) -> torch.Tensor: ...

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class EpochLog:
    """What one epoch measured; ``extra`` holds e.g. per-layer hardness. The model is evaluated after each epoch
    on the validation split when the run holds one out (``val_*``; the test set is then not looked at during
    training), else on the test set (``test_*``)."""

    epoch: int
    task_loss: float
    penalty: float
    test_loss: float | None
    test_acc: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    val_loss: float | None = None
    val_acc: float | None = None

    @property
    def monitored(self) -> tuple[str, float]:
        """(split name, accuracy) of the evaluation after this epoch."""
        if self.val_acc is not None:
            return "validation", self.val_acc
        return "test", float("nan") if self.test_acc is None else self.test_acc


@dataclass
class Loop:
    """Where a training stage runs: its batches, device, whether this process reports, progress bars (``None``:
    only when stderr is a terminal; otherwise one line per epoch) and the held-out validation batches the model
    is evaluated on after each epoch (``None``: the test batches are)."""

    train: Batches
    test: Batches
    device: torch.device
    is_main: bool = True
    progress: bool | None = None
    val: Batches | None = None

    def show_progress(self) -> bool:
        wanted = sys.stderr.isatty() if self.progress is None else self.progress
        return wanted and self.is_main


def pick_device(spec: str = "auto") -> torch.device:
    """'auto' means CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise DeepKMeansError(f"invalid device {spec!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeepKMeansError(f"device {spec!r} requested but CUDA is not available")
    return device


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) on ``batches``; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return loss_sum / max(total, 1), correct / max(total, 1)


@dataclass
class _Optimizer:
    """SGD with momentum (or Adam) and a per-iteration cosine schedule over ``epochs * steps_per_epoch`` steps."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler

    @classmethod
    def build(cls, model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> _Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = max(cfg.epochs * steps_per_epoch, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        return cls(opt, sched)


def _with_defaults(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with each setting added since it was written, at any depth (e.g. ``distill.weight``), its default."""
    filled = {**defaults, **saved}
    for key, default in defaults.items():
        if isinstance(default, dict) and isinstance(saved.get(key), dict):
            filled[key] = _with_defaults(default, saved[key])
    return filled


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in wanted.items() if saved.get(k) != v]


def _hash_tensors(digest: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Feed every tensor's name, dtype, shape and bytes (as stored, any dtype) into ``digest``."""
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy())


def origin_digest(
    model: nn.Module, train: Any, inputs: dict[str, Any] | None = None, teacher: nn.Module | None = None
) -> str:
    """SHA-256 of what a training stage starts from: the model's weights and buffers before its first step, the
    training examples and their shuffle seed, the teacher's weights and the settings in ``inputs`` (e.g. the
    plan the penalty pulls towards). A checkpoint resumes only a run whose origin is this one."""
    digest = hashlib.sha256()
    _hash_tensors(digest, model.state_dict())
    if isinstance(train, Batches):
        _hash_tensors(digest, {"x": train.x, "y": train.y})
        digest.update(f"seed {train.seed} shuffle {train.shuffle}".encode())
    if teacher is not None:
        _hash_tensors(digest, {f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    digest.update(json.dumps(inputs or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _resume(
    checkpoint: Path,
    stage: str,
    cfg: TrainConfig,
    model: nn.Module,
    optim: _Optimizer,
    dkm: Lifecycle | None,
    origin: str,
) -> tuple[int, list[EpochLog]]:
    """Restore a stage from its checkpoint; returns (epochs done, their logs). Only ``epochs`` may change, and
    only a run that started from the same origin (:func:`origin_digest`) is continued."""
    state = load_checkpoint(checkpoint)
    wanted = asdict(cfg)
    if state.get("stage") != stage:
        raise DeepKMeansError(
            f"{checkpoint} holds a {state.get('stage')} run, not {stage}; delete it or choose another output path"
        )
    if "origin" not in state:
        raise DeepKMeansError(
            f"{checkpoint} does not record which input its {stage} run started from, so it cannot be resumed safely;"
            " delete it or choose another output path"
        )
    if state["origin"] != origin:
        raise DeepKMeansError(
            f"{checkpoint} holds a {stage} run of another input (other starting weights, data or plan);"
            " delete it or choose another output path"
        )
    saved = _with_defaults(asdict(type(cfg)()), state.get("config", {}))
    changed = _differences(saved, {k: v for k, v in wanted.items() if k != "epochs"})
    if changed:
        raise DeepKMeansError(
            f"{checkpoint} holds a {stage} run with other settings ({', '.join(changed)});"
            " delete it or choose another output path (only the number of epochs may change)"
        )
    done = int(state["epoch"])
    if cfg.epochs < done:
        raise DeepKMeansError(f"{checkpoint} already holds {done} epochs of {stage}, more than the {cfg.epochs} asked")
    model.load_state_dict(state["model"])
    optim.opt.load_state_dict(state["optimizer"])
    optim.sched.load_state_dict(state["scheduler"])
    saved_epochs = saved.get("epochs")
    if saved_epochs != cfg.epochs and done < cfg.epochs:
        print(
            f"{stage}: extending {checkpoint} from {saved_epochs} to {cfg.epochs} epochs; the cosine schedule now"
            f" ends at epoch {cfg.epochs}"
        )
    if dkm is not None and "deepkmeans" in state:
        dkm.load_state_dict(state["deepkmeans"])
    return done, [EpochLog(**h) for h in state.get("history", [])]


def step(loss: torch.Tensor, opt: torch.optim.Optimizer, dkm: Lifecycle | None) -> float:
    """One optimizer step of (Deep k-Means) training on ``loss``: the lifecycle's penalty joins the loss when it is
    applied there (with ``apply: gradient`` its gradient joins at backward instead), then backward, the optimizer's
    step and the lifecycle's (its F refresh). Returns the penalty added to the loss (0.0 when none was)."""
    penalty = 0.0
    if dkm is not None and dkm.in_loss:
        pen = dkm.penalty()
        loss = loss + pen
        penalty = float(pen.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if dkm is not None:
        dkm.step()
    return penalty


def train_epoch(
    model: nn.Module,
    batches: Batches,
    optim: _Optimizer,
    dkm: Lifecycle | None,
    device: torch.device,
    bar_desc: str,
    progress: bool,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
) -> tuple[float, float, int]:
    """One pass over ``batches``: (sum of task losses, sum of penalties, steps). With a ``teacher`` (in eval mode,
    on ``device``) and ``distill.weight > 0`` the loss trained on is :func:`distillation_loss`; the task loss
    reported stays the cross-entropy."""
    task_sum = pen_sum = 0.0
    n = 0
    use_penalty = dkm is not None and dkm.active
    use_teacher = teacher is not None and distill is not None and distill.weight > 0
    bar = tqdm(batches, desc=bar_desc, leave=False, disable=not progress)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        total = loss
        if use_teacher:
            with torch.no_grad():
                teacher_logits = teacher(x)
            total = distillation_loss(logits, teacher_logits, y, distill.weight, distill.temperature)
        pen = step(total, optim.opt, dkm if use_penalty else None)
        optim.sched.step()
        if dkm is not None and not use_penalty:
            dkm.step()
        pen_sum += pen
        task_sum += float(loss.detach())
        n += 1
        if n % 20 == 0:
            bar.set_postfix(loss=f"{task_sum / n:.4f}")
    if use_penalty and not dkm.in_loss:  # its gradient reached the weights at backward: report its final value
        pen_sum = n * float(dkm.penalty())
    return task_sum, pen_sum, n


def _save(
    checkpoint: Path,
    stage: str,
    cfg: TrainConfig,
    model: nn.Module,
    optim: _Optimizer,
    history: list[EpochLog],
    meta: dict[str, Any] | None,
    dkm: Lifecycle | None,
    origin: str,
) -> None:
    state = {
        "stage": stage,
        "origin": origin,
        "config": asdict(cfg),
        "epoch": history[-1].epoch,
        "model": model.state_dict(),
        "optimizer": optim.opt.state_dict(),
        "scheduler": optim.sched.state_dict(),
        "history": [asdict(h) for h in history],
        "meta": dict(meta or {}),
    }
    if dkm is not None:
        state["deepkmeans"] = dkm.state_dict()
    save_checkpoint(checkpoint, state)


@contextmanager
def _teaching(teacher: nn.Module | None, device: torch.device) -> Iterator[None]:
    """Hold ``teacher`` in eval mode on ``device`` for a stage; its mode and device are restored afterwards."""
    if teacher is None:
        yield
        return
    was_training = teacher.training
    param = next(teacher.parameters(), None)
    home = param.device if param is not None else device
    teacher.to(device).eval()
    try:
        yield
    finally:
        teacher.to(home).train(was_training)


def fit(
    model: nn.Module,
    loop: Loop,
    cfg: TrainConfig,
    *,
    stage: str = "train",
    checkpoint: str | Path | None = None,
    dkm: Lifecycle | None = None,
    on_epoch: Callable[[nn.Module, EpochLog], None] | None = None,
    meta: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    inputs: dict[str, Any] | None = None,
) -> list[EpochLog]:
    """Train ``cfg.epochs`` epochs (with ``dkm``'s penalty if given), checkpointing after each; resumes from
    ``checkpoint`` if it holds the same stage with the same settings, started from the same weights, data,
    teacher, ``meta`` and ``inputs`` (settings the run depends on beyond ``cfg``); refuses any other.
    ``model`` may be a DDP wrapper; checkpoints hold the inner module.
    ``teacher`` with ``distill.weight > 0``: also distil its outputs (see :mod:`deepkmeans.distill`); the teacher
    is not trained, and its mode and device are as they were afterwards.
    """
    inner = model.module if hasattr(model, "module") else model
    optim = _Optimizer.build(model, cfg, len(loop.train))
    history: list[EpochLog] = []
    start = 0
    origin = ""
    if checkpoint is not None:
        origin = origin_digest(inner, loop.train, {"stage": stage, "meta": meta, **(inputs or {})}, teacher)
        if Path(checkpoint).is_file():
            start, history = _resume(Path(checkpoint), stage, cfg, inner, optim, dkm, origin)
    model.to(loop.device).train()
    with _teaching(teacher, loop.device):
        for epoch in range(start, cfg.epochs):
            loop.train.set_epoch(epoch)
            t0 = time.perf_counter()
            desc = f"{stage} {epoch + 1}/{cfg.epochs}"
            show = loop.show_progress()
            task_sum, pen_sum, n = train_epoch(
                model, loop.train, optim, dkm, loop.device, desc, show, teacher=teacher, distill=distill
            )
            seconds = time.perf_counter() - t0
            if not math.isfinite(task_sum):
                raise DeepKMeansError(
                    f"{stage} diverged in epoch {epoch + 1} (loss is not finite); lower the learning rate"
                )
            log = EpochLog(epoch + 1, task_sum / max(n, 1), pen_sum / max(n, 1), None, None, seconds)
            if loop.val is not None:
                log.val_loss, log.val_acc = evaluate(inner, loop.val, loop.device)
            else:
                log.test_loss, log.test_acc = evaluate(inner, loop.test, loop.device)
            if on_epoch is not None:
                on_epoch(inner, log)
            history.append(log)
            if loop.is_main:
                shown = f" penalty {log.penalty:.4g}" if dkm is not None and dkm.active else ""
                split, acc = log.monitored
                tqdm.write(
                    f"{stage} epoch {epoch + 1}/{cfg.epochs}: loss {log.task_loss:.4f}{shown}"
                    f" {'val' if split == 'validation' else 'test'} acc {100 * acc:.2f}% ({seconds:.1f}s)"
                )
            if checkpoint is not None and loop.is_main:
                _save(Path(checkpoint), stage, cfg, inner, optim, history, meta, dkm, origin)
    return history
