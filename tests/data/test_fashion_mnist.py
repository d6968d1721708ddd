"""Fashion-MNIST from its Debian package: a synthetic .deb in the real layout (ar + data.tar.xz holding the
four gzipped IDX files), the pinned checksum, the completeness checks and the --data-dir path."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deepkmeans.data import DatasetError, load_splits
from deepkmeans.data import fashion_mnist as fm
from deepkmeans.data.mnist import IDX_FILES
from tests.conftest import write_idx


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _splits(per_class: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in per_class.items():
        labels = np.repeat(np.arange(10), n)
        out[f"{split}_labels"] = rng.permutation(labels).astype(np.uint8)
        out[f"{split}_images"] = rng.integers(0, 256, size=(10 * n, 28, 28), dtype=np.uint8)
    return out


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def _deb(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for key, stem in IDX_FILES.items():
            payload = gzip.compress(_idx(arrays[key]))
            info = tarfile.TarInfo(f"{fm.DEB_DIR}{stem}.gz")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:xz"):
        pass
    path.write_bytes(
        _ar({"debian-binary": b"2.0\n", "control.tar.xz": control.getvalue(), "data.tar.xz": data.getvalue()})
    )
    return path


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """The completeness check scaled down: 30 + 10 images, 3 and 1 of each class."""
    monkeypatch.setattr(fm, "COUNTS", {"train": 30, "test": 10})


def test_package_is_checked_converted_and_deleted(tmp_path: Path, small: None, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _splits({"train": 3, "test": 1})
    deb = _deb(tmp_path / fm.DEB_NAME, arrays)
    monkeypatch.setattr(fm, "DEB_SHA256", fm.sha256(deb))
    train, test = fm.load_cached(tmp_path, download=False)
    assert np.array_equal(train.images, arrays["train_images"]) and np.array_equal(test.labels, arrays["test_labels"])
    assert train.labels.dtype == np.int64 and not deb.exists() and (tmp_path / fm.CACHE_NAME).is_file()
    again, _ = fm.load_cached(tmp_path, download=False)  # from the cache now
    assert np.array_equal(again.images, train.images)


def test_a_package_that_is_not_the_pinned_one_is_refused(tmp_path: Path, small: None) -> None:
    deb = _deb(tmp_path / fm.DEB_NAME, _splits({"train": 3, "test": 1}))
    with pytest.raises(DatasetError, match="is not the pinned 39e172fe"):
        fm.load_cached(tmp_path, download=False)
    assert deb.exists() and not (tmp_path / fm.CACHE_NAME).exists()


def test_an_incomplete_set_is_refused(tmp_path: Path, small: None, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _splits({"train": 3, "test": 1})
    arrays["train_labels"][arrays["train_labels"] == 9] = 8  # class 9 missing
    deb = _deb(tmp_path / fm.DEB_NAME, arrays)
    monkeypatch.setattr(fm, "DEB_SHA256", fm.sha256(deb))
    with pytest.raises(DatasetError, match="not 3 of each of 10 classes"):
        fm.load_cached(tmp_path, download=False)


def test_not_a_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb = tmp_path / fm.DEB_NAME
    deb.write_bytes(b"PK\x03\x04 not an ar archive")
    monkeypatch.setattr(fm, "DEB_SHA256", fm.sha256(deb))
    with pytest.raises(DatasetError, match="not a Debian package"):
        fm.load_cached(tmp_path, download=False)


def test_without_cache_apt_get_or_download_the_error_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DatasetError, match="downloading is disabled"):
        fm.load_cached(tmp_path, download=False)
    monkeypatch.setattr(fm.shutil, "which", lambda _: None)
    with pytest.raises(DatasetError, match="apt-get is not available.*--data-dir"):
        fm.load_cached(tmp_path)


def test_data_dir_takes_the_standard_files_normalized_with_fashion_statistics(tmp_path: Path) -> None:
    arrays = _splits({"train": 3, "test": 1})
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key])
    fashion = load_splits("fashion_mnist", tmp_path, 8, validation=5)
    digits = load_splits("mnist", tmp_path, 8, validation=5)
    assert len(fashion.train.x) == 25 and len(fashion.val.x) == 5 and len(fashion.test.x) == 10
    pixels = arrays["train_images"][:25].astype(np.float64) / 255.0
    expected = (pixels - fm.MEAN) / fm.STD
    assert np.allclose(fashion.train.x[:, 0].numpy(), expected, atol=1e-5)
    assert not np.allclose(fashion.train.x.numpy(), digits.train.x.numpy())
