"""CIFAR-10 reader on tiny synthetic batches written in the format of the real ``cifar-10-batches-py``."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deepkmeans.data.cifar10 import (
    MEAN,
    STD,
    CifarDataset,
    cifar10_loaders,
    load_cifar10,
    random_crop_flip,
)
from deepkmeans.data.errors import DatasetError
from tests.conftest import cifar_batch as _batch
from tests.conftest import write_pickle as _write

TRAIN_PER_BATCH = 2
TEST_SIZE = 3


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


@pytest.fixture()
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(5):
        labels = [(2 * i + j) % 10 for j in range(TRAIN_PER_BATCH)]
        _write(folder / f"data_batch_{i + 1}", _batch(_images(TRAIN_PER_BATCH, seed=i), labels))
    _write(folder / "test_batch", _batch(_images(TEST_SIZE, seed=99), [9, 0, 5]))
    return tmp_path


def test_shapes_labels_and_either_root(cifar_root: Path) -> None:
    for root in (cifar_root, cifar_root / "cifar-10-batches-py"):
        train, test = load_cifar10(root)
        assert train.images.shape == (5 * TRAIN_PER_BATCH, 3, 32, 32)
        assert test.images.shape == (TEST_SIZE, 3, 32, 32)
        assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
        assert train.labels.tolist() == list(range(10))
        assert test.labels.tolist() == [9, 0, 5]
        np.testing.assert_array_equal(train.images[:2], _images(TRAIN_PER_BATCH, seed=0))
        np.testing.assert_array_equal(test.images, _images(TEST_SIZE, seed=99))


def test_channel_order_is_rgb_planes_row_major(cifar_root: Path) -> None:
    folder = cifar_root / "cifar-10-batches-py"
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    row[1 * 32 + 2] = 255  # red plane, image row 1, column 2
    batch = _batch(np.zeros((1, 3, 32, 32), np.uint8), [3])
    batch[b"data"] = row[None, :]
    _write(folder / "test_batch", batch)
    image = load_cifar10(cifar_root)[1].images[0]
    assert image[0, 1, 2] == 255
    assert image[0, 0, 0] == 10 and image[0, 2, 1] == 10
    assert (image[1] == 20).all() and (image[2] == 30).all()


class _Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` and ``str`` as Python 2 strings and names numpy.core, like the real batch files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_string(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_string
    dispatch[str] = _save_py2_string


def test_reads_python2_style_pickles(cifar_root: Path) -> None:
    folder = cifar_root / "cifar-10-batches-py"
    images = _images(TEST_SIZE, seed=7)
    with (folder / "test_batch").open("wb") as fh:
        _Python2Pickler(fh, protocol=2).dump(_batch(images, [1, 2, 3]))
    raw = (folder / "test_batch").read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"_codecs" not in raw and b"numpy.core.multiarray\n_reconstruct" in raw
    (folder / "test_batch").write_bytes(raw)
    test = load_cifar10(cifar_root)[1]
    np.testing.assert_array_equal(test.images, images)
    assert test.labels.tolist() == [1, 2, 3]


def test_missing_file_names_expected_files_and_dir(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing in .*cifar-10-batches-py: data_batch_3$") as info:
        load_cifar10(cifar_root)
    assert isinstance(info.value, ValueError)
    assert "test_batch" in str(info.value) and str(cifar_root) in str(info.value)
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10(cifar_root / "nowhere")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a valid CIFAR-10 batch pickle"),
        (lambda p: p.write_bytes(b"not a pickle at all"), "not a valid CIFAR-10 batch pickle"),
        (lambda p: _write(p, [1, 2, 3]), "expected a pickled dict"),
        (lambda p: _write(p, {b"data": np.zeros((3, 3072), np.uint8)}), "no 'labels' entry"),
        (lambda p: _write(p, {b"data": np.zeros((3, 100), np.uint8), b"labels": [0] * 3}), r"\(n, 3072\)"),
        (lambda p: _write(p, {b"data": np.zeros((3, 3072), np.float32), b"labels": [0] * 3}), "float32"),
        (lambda p: _write(p, {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0] * 2}), "3 images"),
        (lambda p: _write(p, {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}), "0..9"),
    ],
)
def test_corrupt_batch_is_reported(cifar_root: Path, corrupt, message: str) -> None:
    path = cifar_root / "cifar-10-batches-py" / "test_batch"
    corrupt(path)
    with pytest.raises(DatasetError, match=message) as info:
        load_cifar10(cifar_root)
    assert str(path) in str(info.value)


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def test_unpickler_refuses_arbitrary_globals(cifar_root: Path) -> None:
    _write(cifar_root / "cifar-10-batches-py" / "test_batch", {b"data": _RunsCode(), b"labels": []})
    with pytest.raises(DatasetError, match="refusing to load global .*getcwd"):
        load_cifar10(cifar_root)


def test_random_crop_flip_keeps_shape_dtype_and_content() -> None:
    images = torch.from_numpy(_images(4, seed=1))
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(len(images)):
        crops = [padded[i, :, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    again = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_dataset_normalizes_and_batches(cifar_root: Path) -> None:
    train, test = load_cifar10(cifar_root)
    image, label = CifarDataset(test)[1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and label.dtype == torch.int64
    expected = (test.images[1, 2, 5, 7] / 255.0 - MEAN[2]) / STD[2]
    assert image[2, 5, 7].item() == pytest.approx(expected, rel=1e-5)

    train_loader, test_loader = cifar10_loaders(cifar_root, batch_size=4, seed=0)
    x, y = next(iter(train_loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs, ys = zip(*test_loader, strict=True)
    assert torch.cat(ys).tolist() == [9, 0, 5]
    assert torch.equal(torch.cat(xs), torch.stack([CifarDataset(test)[i][0] for i in range(TEST_SIZE)]))
