"""Datasets as in-memory tensors served in shuffled mini-batches (fast on a CPU, no worker processes)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepkmeans.data.errors import DatasetError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Batches:
    """Mini-batches over tensors ``x``, ``y``; the shuffle order depends only on (seed, epoch).

    Tying the order to the epoch number makes an interrupted-and-resumed run see the same batches.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        augment: Augment | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        self.shard = (0, 1)

    def with_batch_size(self, batch_size: int) -> Batches:
        """The same examples, shuffle, seed and shard, served in batches of another size."""
        other = copy.copy(self)
        other.batch_size = batch_size
        return other

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_shard(self, rank: int, world_size: int) -> None:
        """Serve only every ``world_size``-th batch starting at ``rank`` (data-parallel training)."""
        self.shard = (rank, world_size)

    def _starts(self) -> list[int]:
        starts = list(range(0, len(self.x), self.batch_size))
        rank, world = self.shard
        # Every rank must see the same number of batches, or DDP's gradient all-reduce would hang.
        starts = starts[: len(starts) - len(starts) % world]
        return starts[rank::world]

    def __len__(self) -> int:
        return len(self._starts())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.x)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for start in self._starts():
            idx = order[start : start + self.batch_size]
            xb = self.x[idx]
            if self.augment is not None:
                xb = self.augment(xb, gen)
            yield xb, self.y[idx]


def _mnist_tensors(
    images: np.ndarray, labels: np.ndarray, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x.unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


@dataclass
class Splits:
    """Batches of one dataset: training, validation (the last examples of the training set, held out) and test."""

    train: Batches
    val: Batches | None
    test: Batches


def _carve(x: torch.Tensor, y: torch.Tensor, validation: int, limit: int | None) -> tuple:
    """(train x, train y, val x, val y): the last ``validation`` examples are held out, then ``limit`` applies."""
    if not 0 <= validation < len(x):
        raise DatasetError(
            f"validation must hold 0 to {len(x) - 1} of the {len(x)} training examples, got {validation}"
        )
    cut = len(x) - validation
    return x[:cut][:limit], y[:cut][:limit], x[cut:], y[cut:]


def load_splits(
    dataset: str,
    data_dir: str | Path | None,
    batch_size: int,
    seed: int = 0,
    limit: int | None = None,
    validation: int = 0,
) -> Splits:
    """Train, validation and test batches; ``validation`` holds out the last n training examples (choices are
    made on them, never on the test set); ``limit`` keeps the first n examples of the training and test parts."""
    if dataset in ("mnist", "fashion_mnist"):
        if dataset == "mnist":
            from deepkmeans.data.mnist import load_mnist as load

            mean, std = MNIST_MEAN, MNIST_STD
        else:
            from deepkmeans.data.fashion_mnist import MEAN as mean
            from deepkmeans.data.fashion_mnist import STD as std
            from deepkmeans.data.fashion_mnist import load_fashion_mnist as load

        train, test = load(data_dir)
        xtr, ytr, xva, yva = _carve(*_mnist_tensors(train.images, train.labels, mean, std), validation, limit)
        xte, yte = _mnist_tensors(test.images[:limit], test.labels[:limit], mean, std)
        val = Batches(xva, yva, 1000, False) if validation else None
        return Splits(Batches(xtr, ytr, batch_size, True, seed), val, Batches(xte, yte, 1000, False))
    if dataset == "cifar10":
        from deepkmeans.data.cifar10 import load_cifar10, normalize, random_crop_flip

        if data_dir is None:
            raise DatasetError("CIFAR-10 needs --data-dir pointing at a cifar-10-batches-py directory")
        train, test = load_cifar10(data_dir)
        # Kept as uint8 and normalized per batch, after the crop pads with black as usual.
        labels = torch.from_numpy(train.labels).to(torch.int64)
        xtr, ytr, xva, yva = _carve(torch.from_numpy(train.images), labels, validation, limit)
        xte = normalize(torch.from_numpy(test.images[:limit]))
        yte = torch.from_numpy(test.labels[:limit]).to(torch.int64)
        augment = lambda xb, gen: normalize(random_crop_flip(xb, gen))  # noqa: E731
        val = Batches(normalize(xva), yva, 500, False) if validation else None
        return Splits(Batches(xtr, ytr, batch_size, True, seed, augment), val, Batches(xte, yte, 500, False))
    raise DatasetError(f"unknown dataset {dataset!r}; known: mnist, fashion_mnist, cifar10")


def load_data(
    dataset: str, data_dir: str | Path | None, batch_size: int, seed: int = 0, limit: int | None = None
) -> tuple[Batches, Batches]:
    """Train and test batches for ``dataset`` (no validation split); see :func:`load_splits`."""
    splits = load_splits(dataset, data_dir, batch_size, seed, limit)
    return splits.train, splits.test
