"""Shared fixtures: tiny synthetic MNIST in IDX format, so no test depends on a download."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (big-endian dims, type 0x08)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist_dir(root: Path, n_train: int = 256, n_test: int = 128, seed: int = 0) -> Path:
    """Learnable synthetic digits: each class is a bright bar at its own position, plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y : 4 + 2 * y, 4:24] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return make_mnist_dir(tmp_path / "mnist")


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


def cifar_batch(images: np.ndarray, labels: list[int]) -> dict[bytes, object]:
    """One CIFAR-10 batch dict as the Python pickles store it (byte-string keys, flat uint8 rows)."""
    return {
        b"batch_label": b"synthetic batch",
        b"labels": labels,
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }


def write_pickle(path: Path, obj: object) -> None:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def make_cifar_dir(root: Path, per_batch: int = 8, n_test: int = 16, seed: int = 0) -> Path:
    """A ``cifar-10-batches-py`` folder with five tiny training batches and a test batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(5):
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        write_pickle(
            folder / f"data_batch_{i + 1}", cifar_batch(images, [int(v) for v in rng.integers(0, 10, per_batch)])
        )
    images = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    write_pickle(folder / "test_batch", cifar_batch(images, [int(v) for v in rng.integers(0, 10, n_test)]))
    return folder
