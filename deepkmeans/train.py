"""Training loops (pre-training and regularized re-training) with atomic, resumable checkpoints."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from deepkmeans.config import TrainConfig
from deepkmeans.data import Batches
from deepkmeans.errors import DeepKMeansError
from deepkmeans.fileio import write_atomic


class Penalty(Protocol):
    """What the training loop needs from a regularizer."""

    def penalty(self) -> torch.Tensor: ...

    def step(self) -> None: ...


@dataclass
class EpochLog:
    """What one epoch measured; ``extra`` holds e.g. per-layer hardness."""

    epoch: int
    task_loss: float
    penalty: float
    test_loss: float
    test_acc: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


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
    """Mean cross-entropy and accuracy (fraction) on ``batches``."""
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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save``: an interrupted write never leaves a half checkpoint behind."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise DeepKMeansError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user-facing error
        raise DeepKMeansError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DeepKMeansError(f"{path}: not a deepkmeans checkpoint (no model state)")
    return state


def fit(
    model: nn.Module,
    train: Batches,
    test: Batches,
    cfg: TrainConfig,
    device: torch.device,
    checkpoint: str | Path | None = None,
    regularizer: Penalty | None = None,
    on_epoch: Callable[[nn.Module, EpochLog], None] | None = None,
    meta: dict[str, Any] | None = None,
    desc: str = "train",
    progress: bool = True,
    is_main: bool = True,
) -> list[EpochLog]:
    """SGD with momentum and a per-iteration cosine schedule; resumes from ``checkpoint`` if present.

    ``model`` may be a DDP wrapper; the checkpoint stores the inner module's state. Only the main
    rank writes checkpoints and shows progress.
    """
    inner = model.module if hasattr(model, "module") else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total_steps = max(cfg.epochs * len(train), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    history: list[EpochLog] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        if state.get("stage") != desc or state.get("config") != asdict(cfg):
            raise DeepKMeansError(
                f"{checkpoint} holds a {state.get('stage')} run with different settings;"
                " delete it or choose another output path"
            )
        inner.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"])
        history = [EpochLog(**h) for h in state.get("history", [])]
        if regularizer is not None and "regularizer" in state and hasattr(regularizer, "load_state_dict"):
            regularizer.load_state_dict(state["regularizer"])
    model.to(device).train()
    for epoch in range(start, cfg.epochs):
        train.set_epoch(epoch)
        t0 = time.perf_counter()
        task_sum = pen_sum = 0.0
        n = 0
        bar = tqdm(train, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=not (progress and is_main))
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = nn.functional.cross_entropy(model(x), y)
            total = loss
            if regularizer is not None:
                pen = regularizer.penalty()
                total = loss + pen
                pen_sum += float(pen.detach())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            if regularizer is not None:
                regularizer.step()
            task_sum += float(loss.detach())
            n += 1
            if n % 20 == 0:
                bar.set_postfix(loss=f"{task_sum / n:.4f}")
        seconds = time.perf_counter() - t0
        if not math.isfinite(task_sum):
            raise DeepKMeansError(f"{desc} diverged in epoch {epoch + 1} (loss is not finite); lower the learning rate")
        test_loss, test_acc = evaluate(inner, test, device)
        log = EpochLog(epoch + 1, task_sum / max(n, 1), pen_sum / max(n, 1), test_loss, test_acc, seconds)
        if on_epoch is not None:
            on_epoch(inner, log)
        history.append(log)
        if is_main:
            tqdm.write(
                f"{desc} epoch {epoch + 1}/{cfg.epochs}: loss {log.task_loss:.4f}"
                + (f" penalty {log.penalty:.4g}" if regularizer is not None else "")
                + f" test acc {100 * test_acc:.2f}% ({seconds:.1f}s)"
            )
        if checkpoint is not None and is_main:
            state = {
                "stage": desc,
                "config": asdict(cfg),
                "epoch": epoch + 1,
                "model": inner.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": [asdict(h) for h in history],
                "meta": dict(meta or {}),
            }
            if regularizer is not None and hasattr(regularizer, "state_dict"):
                state["regularizer"] = regularizer.state_dict()
            save_checkpoint(checkpoint, state)
    return history
