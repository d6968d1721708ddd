"""One way to measure a compressed model: accuracy, paper-accounting and file compression ratios.

Used by the pipeline, the sweep, ``deepkmeans evaluate`` and the benchmarks alike. With ``save_to`` the
model is written to a real file and the accuracy is that of the model read back from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepkmeans.accounting import Accounting, account
from deepkmeans.data import Batches
from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.models import load, save, stored_state
from deepkmeans.shared import copy_module, materialize
from deepkmeans.train import evaluate


@dataclass(frozen=True)
class Measurement:
    """What one compressed (or dense) model measured."""

    test_acc: float
    test_loss: float
    accounting: Accounting
    path: str | None = None  # the file written and read back, if any
    bitwise_equal: bool | None = None  # the model read back equals the one written (as stored), tensor for tensor
    val_acc: float | None = None  # accuracy on the validation split (held-out training images), if given

    @property
    def paper_cr(self) -> float:
        return self.accounting.paper_cr

    @property
    def file_cr(self) -> float | None:
        return self.accounting.file_cr

    @property
    def file_bytes(self) -> int | None:
        return self.accounting.file_bytes


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _same_state(sa: dict[str, torch.Tensor], sb: dict[str, torch.Tensor]) -> bool:
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa
    )


class _Counted:
    """Batches passed through, counting their samples (an iterator or a loader may turn out empty)."""

    def __init__(self, batches: Batches) -> None:
        self.batches, self.samples = batches, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches:
            self.samples += len(y)
            yield x, y


def _evaluate(model: nn.Module, batches: Batches, device: torch.device, what: str) -> tuple[float, float]:
    """Loss and accuracy on ``batches``, refused when they held no sample."""
    counted = _Counted(batches)
    loss, acc = evaluate(model, counted, device)
    if counted.samples == 0:
        raise DeepKMeansError(f"{what}: no samples to measure on (an accuracy over nothing is not 0)")
    return loss, acc


def measure(
    model: nn.Module,
    batches: Batches,
    device: torch.device | None = None,
    *,
    save_to: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    file_bytes: int | None = None,
    val: Batches | None = None,
) -> Measurement:
    """Evaluate ``model`` on ``batches`` and account for its bits; ``model`` is left as it was.

    ``save_to``: write the compressed file there first (with ``meta``), read it back, and evaluate what was
    read (its BatchNorm in the file's inference form: the same eval outputs, see ``save``). ``file_bytes``: the
    size of the file ``model`` came from, when it was not written here. ``device``: where to evaluate (a copy is
    moved there when the model lives elsewhere). ``val``: validation batches (held-out training images) the
    same model is also evaluated on, for choices made without the test set.
    """
    for given, what in ((batches, "batches"), (val, "val")):
        if given is not None and hasattr(given, "__len__") and len(given) == 0:
            raise DeepKMeansError(f"{what}: no batches to measure on (an accuracy over nothing is not 0)")
    subject, equal, path = model, None, None
    if save_to is not None:
        file_bytes = save(model, save_to, meta)
        subject = load(save_to, model=materialize(model), materialize=False)
        equal, path = _same_state(stored_state(model), subject.state_dict()), str(save_to)
    device = device or model_device(model)
    if model_device(subject) != device:
        subject = (copy_module(subject) if subject is model else subject).to(device)
    loss, acc = _evaluate(subject, batches, device, "batches")
    val_acc = None if val is None else _evaluate(subject, val, device, "val")[1]
    return Measurement(acc, loss, account(model, file_bytes), path, equal, val_acc)
