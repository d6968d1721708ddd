"""Fashion-MNIST (Zalando; 60,000 + 10,000 grey 28x28 images of 10 clothing classes, Expat license) from its
four standard IDX files or, offline, from the Debian package ``dataset-fashion-mnist`` that ships them.

The package is fetched with ``apt-get download`` (no root, nothing installed), checked against a pinned
SHA-256, and its four ``.gz`` IDX files are read straight out of the ``.deb`` (an ``ar`` archive holding
``data.tar.xz``) into a compact ``.npz`` cache; the ``.deb`` is then deleted. ``--data-dir`` takes a directory
with the four IDX files (plain or ``.gz``), as for MNIST.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from deepkmeans.data.errors import DatasetError
from deepkmeans.data.mnist import IDX_FILES, Split, cache_dir, cached_splits, load_idx_dir, write_cache
from deepkmeans.files.atomic import write_atomic

DEB_PACKAGE = "dataset-fashion-mnist"
DEB_VERSION = "0.0~git20200523.55506a9-1"
DEB_NAME = f"{DEB_PACKAGE}_{DEB_VERSION}_all.deb"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
DEB_DIR = "./usr/share/datasets/fashion-mnist/"
CACHE_NAME = "fashion_mnist.npz"
CLASSES = 10
COUNTS = {"train": 60_000, "test": 10_000}  # balanced: 6,000 and 1,000 images per class
# Mean and standard deviation of the training pixels (scaled to [0, 1]), measured on the 60,000 images.
MEAN, STD = 0.2860, 0.3530


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ar_members(raw: bytes, source: Path) -> dict[str, bytes]:
    """The members of a Unix ``ar`` archive (the container of a ``.deb``)."""
    if not raw.startswith(b"!<arch>\n"):
        raise DatasetError(f"{source}: not a Debian package (no ar header)")
    members, pos = {}, 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DatasetError(f"{source}: corrupt ar member header") from None
        members[name] = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def _extract_idx(deb: Path, out: Path) -> None:
    """Write the four IDX ``.gz`` files of the package into ``out``."""
    members = _ar_members(deb.read_bytes(), deb)
    data = next((members[n] for n in members if n.startswith("data.tar")), None)
    if data is None:
        raise DatasetError(f"{deb}: no data.tar member")
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for stem in IDX_FILES.values():
                member = tar.extractfile(f"{DEB_DIR}{stem}.gz")
                if member is None:
                    raise KeyError(stem)
                write_atomic(out / f"{stem}.gz", member.read())
    except (tarfile.TarError, KeyError) as exc:
        raise DatasetError(f"{deb}: does not hold the Fashion-MNIST IDX files ({exc})") from None


def check_splits(train: Split, test: Split, source: str) -> None:
    """The complete set: 60,000 + 10,000 images of 28x28, labels 0..9, every class equally often."""
    for name, split in (("train", train), ("test", test)):
        n = COUNTS[name]
        if split.images.shape != (n, 28, 28) or split.labels.shape != (n,):
            raise DatasetError(f"{source}: {name} split has {split.images.shape} images, expected ({n}, 28, 28)")
        counts = np.bincount(split.labels, minlength=CLASSES)
        if len(counts) != CLASSES or not (counts == n // CLASSES).all():
            raise DatasetError(f"{source}: {name} labels are not {n // CLASSES} of each of {CLASSES} classes")


def convert_deb(deb: Path, out: Path) -> None:
    """Check ``deb`` against the pinned SHA-256, read its IDX files and write the ``.npz`` cache atomically."""
    actual = sha256(deb)
    if actual != DEB_SHA256:
        raise DatasetError(f"{deb}: SHA-256 {actual} is not the pinned {DEB_SHA256}; delete it to re-fetch")
    with tempfile.TemporaryDirectory(prefix="deepkmeans-fashion-") as tmp:
        _extract_idx(deb, Path(tmp))
        train, test = load_idx_dir(tmp)
    check_splits(train, test, str(deb))
    write_cache(out, train, test)


def _download_deb(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    apt = shutil.which("apt-get")
    hint = "pass --data-dir with the four Fashion-MNIST IDX files"
    if apt is None:
        raise DatasetError(f"Fashion-MNIST is not cached and apt-get is not available to fetch {DEB_PACKAGE}; {hint}")
    result = subprocess.run([apt, "download", f"{DEB_PACKAGE}={DEB_VERSION}"], cwd=dest, capture_output=True, text=True)
    deb = dest / DEB_NAME
    if result.returncode != 0 or not deb.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DatasetError(
            f"Fashion-MNIST is not cached and `apt-get download {DEB_PACKAGE}={DEB_VERSION}` failed"
            f" ({detail[-1] if detail else 'no output'}); {hint}"
        )
    return deb


def load_cached(root: Path | None = None, download: bool = True) -> tuple[Split, Split]:
    """Load Fashion-MNIST from the cache, building it from the Debian package the first time."""
    root = root or cache_dir()
    return cached_splits(
        root / CACHE_NAME, root / DEB_NAME, lambda: _download_deb(root), convert_deb, "Fashion-MNIST", download
    )


def load_fashion_mnist(data_dir: str | Path | None = None) -> tuple[Split, Split]:
    """Fashion-MNIST train/test: from IDX files in ``data_dir`` if given, else from the offline cache."""
    if data_dir is not None:
        return load_idx_dir(data_dir)
    return load_cached()
