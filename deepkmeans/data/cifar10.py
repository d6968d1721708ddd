"""CIFAR-10 from the standard ``cifar-10-batches-py`` directory, and torch loaders with augmentation.

The batches are Python 2 pickles; they are read with an unpickler that can only rebuild dicts, lists,
bytes and numpy arrays, so a tampered file cannot run code. Augmentation (4-pixel zero-padded random
crop + horizontal flip) and normalization use plain torch ops on whole batches.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from deepkmeans.data.errors import DatasetError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
PAD = 4
# The reference code's normalization constants, kept so its checkpoints see the inputs they were trained on.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class CifarSplit:
    """One split: uint8 images ``(n, 3, 32, 32)`` (RGB planes) and int64 labels ``(n,)``."""

    images: np.ndarray
    labels: np.ndarray


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild ``bytes``; any other codec is refused."""
    if encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a CIFAR-10 batch")
    return codecs.encode(text, "latin1")


# ndarray.__reduce__ names numpy's private _reconstruct; take it from numpy itself so that both the
# numpy 1 (numpy.core) and numpy 2 (numpy._core) spellings resolve without importing either module.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _field(batch: dict[Any, Any], key: str) -> Any:
    """A batch field under its byte-string key (Python 2 files) or its str key (re-pickled files)."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise KeyError(key)


def read_batch(path: Path) -> CifarSplit:
    """Read and validate one pickled batch file."""
    try:
        with path.open("rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read CIFAR-10 batch ({exc})") from None
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean "not a batch"
        reason = f"{type(exc).__name__}: {exc}"
        raise DatasetError(f"{path}: not a valid CIFAR-10 batch pickle ({reason})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    try:
        data, labels = _field(batch, "data"), _field(batch, "labels")
    except KeyError as exc:
        raise DatasetError(f"{path}: CIFAR-10 batch has no {exc.args[0]!r} entry") from None
    pixels = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray):
        raise DatasetError(f"{path}: 'data' must be a uint8 array (n, {pixels}), found {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        found = f"{data.dtype} array {data.shape}"
        raise DatasetError(f"{path}: 'data' must be a uint8 array (n, {pixels}), found {found}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: 'labels' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise DatasetError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}")
    # Each row is 1024 R, then 1024 G, then 1024 B bytes, each plane row-major 32x32.
    return CifarSplit(data.reshape(-1, *IMAGE_SHAPE).copy(), labels)


def find_batches_dir(root: str | Path) -> Path:
    """The directory holding the batch files: ``root`` itself or ``root/cifar-10-batches-py``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CIFAR-10 data directory {root} does not exist")
    expected = (*TRAIN_FILES, TEST_FILE)
    candidates = (root, root / BATCHES_DIR)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in expected):
            return candidate
    best = root / BATCHES_DIR if (root / BATCHES_DIR).is_dir() else root
    missing = [name for name in expected if not (best / name).is_file()]
    hint = ""
    if (root / "cifar-10-python.tar.gz").is_file():
        hint = "; extract cifar-10-python.tar.gz first"
    raise DatasetError(
        f"CIFAR-10 batches not found: searched {root} and {root / BATCHES_DIR}; expected "
        f"{', '.join(expected)} (the python version of CIFAR-10); "
        f"missing in {best}: {', '.join(missing)}{hint}"
    )


def load_cifar10(root: str | Path) -> tuple[CifarSplit, CifarSplit]:
    """Load (train, test) from ``cifar-10-batches-py`` or its parent directory."""
    folder = find_batches_dir(root)
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    train = CifarSplit(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    return train, read_batch(folder / TEST_FILE)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image, then a horizontal flip with probability 1/2.

    Works on a whole ``(n, c, h, w)`` batch of any dtype and returns the same shape and dtype.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, None, :, None]
    cols = (dx + torch.arange(w))[:, None, None, :]
    samples = torch.arange(n)[:, None, None, None]
    channels = torch.arange(images.shape[1])[:, None, None]
    cropped = padded[samples, channels, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 3, h, w)`` to float32 scaled to [0, 1] and standardized per channel."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class CifarDataset(Dataset):
    """A split as normalized float32 images and int64 labels, optionally augmented.

    ``__getitems__`` lets the DataLoader fetch a whole batch, so augmentation runs as a few tensor ops
    per batch instead of per image.
    """

    def __init__(self, split: CifarSplit, augment: bool = False, seed: int = 0) -> None:
        self.images = torch.from_numpy(split.images)
        self.labels = torch.from_numpy(split.labels)
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def _rng(self) -> torch.Generator | None:
        # Inside a worker, torch's default generator is reseeded per worker and per epoch from the
        # loader's seed; a copied self.generator would repeat the same crops every epoch.
        return self.generator if get_worker_info() is None else None

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index]
        if self.augment:
            images = random_crop_flip(images, self._rng())
        return list(zip(normalize(images).unbind(0), self.labels[index].unbind(0), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]


def cifar10_loaders(
    root: str | Path, batch_size: int, augment: bool = True, num_workers: int = 0, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """(train, test) loaders: the train loader shuffles (and augments), the test loader keeps file order."""
    train, test = load_cifar10(root)
    train_loader = DataLoader(
        CifarDataset(train, augment=augment, seed=seed),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
    )
    test_loader = DataLoader(
        CifarDataset(test),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
    return train_loader, test_loader
