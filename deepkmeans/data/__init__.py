"""Datasets as in-memory tensors served in shuffled mini-batches (fast on a CPU, no worker processes)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
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


def _mnist_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


def load_data(
    dataset: str,
    data_dir: str | Path | None,
    batch_size: int,
    seed: int = 0,
    limit: int | None = None,
) -> tuple[Batches, Batches]:
    """Train and test batches for ``dataset``; ``limit`` keeps the first n examples of each split."""
    if dataset == "mnist":
        from deepkmeans.data.mnist import load_mnist

        train, test = load_mnist(data_dir)
        xtr, ytr = _mnist_tensors(train.images[:limit], train.labels[:limit])
        xte, yte = _mnist_tensors(test.images[:limit], test.labels[:limit])
        return Batches(xtr, ytr, batch_size, True, seed), Batches(xte, yte, 1000, False)
    if dataset == "cifar10":
        from deepkmeans.data.cifar10 import load_cifar10, normalize, random_crop_flip

        if data_dir is None:
            raise DatasetError("CIFAR-10 needs --data-dir pointing at a cifar-10-batches-py directory")
        train, test = load_cifar10(data_dir)
        # Kept as uint8 and normalized per batch, after the crop pads with black as usual.
        xtr = torch.from_numpy(train.images[:limit])
        xte = normalize(torch.from_numpy(test.images[:limit]))
        ytr = torch.from_numpy(train.labels[:limit]).to(torch.int64)
        yte = torch.from_numpy(test.labels[:limit]).to(torch.int64)
        augment = lambda xb, gen: normalize(random_crop_flip(xb, gen))  # noqa: E731
        return Batches(xtr, ytr, batch_size, True, seed, augment), Batches(xte, yte, 500, False)
    raise DatasetError(f"unknown dataset {dataset!r}; known: mnist, cifar10")
