"""Same seed, same bytes: training and compression are reproducible, so a compressed file can be rebuilt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deepkmeans import compress, save
from deepkmeans.cli import main
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.files.checkpoints import load_checkpoint
from deepkmeans.models.lenet import LeNet5Caffe

# K-means++ seeding matters for rows of length d >= 2 (d = 1 uses the exact, seed-free 1-D solver).
LAYERS = {"conv1": LayerSpec(4), "conv2": LayerSpec(4, 0.5), "fc2": LayerSpec(4, d=5)}
MODEL_META = {"name": "lenet5_caffe", "dataset": "mnist"}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """CPU float results may depend on the thread count; pin it so both runs do the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_train_and_compress_twice_give_identical_files(
    tmp_path: Path, mnist_dir: Path, one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {mnist_dir}\ndevice: cpu\nseed: 5\n"
        "train: {epochs: 2, batch_size: 32, lr: 0.05}\n"
        "compress: {seed: 2, layers: {conv1: {K: 4}, conv2: {K: 4, p: 0.5}, fc1: {K: 4, p: 0.9, d: 5}}}\n"
    )
    files = []
    for run in ("a", "b"):
        checkpoint, compressed = tmp_path / f"{run}.ckpt", tmp_path / f"{run}.dkm"
        assert main(["train", "--config", str(config), "-o", str(checkpoint)]) == 0
        assert main(["compress", str(checkpoint), "--config", str(config), "-o", str(compressed)]) == 0
        files.append(compressed.read_bytes())
    capsys.readouterr()
    first, second = (load_checkpoint(tmp_path / f"{run}.ckpt")["model"] for run in ("a", "b"))
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), f"training is not reproducible: {name} differs"
    assert files[0] == files[1]


def _compressed_bytes(state: dict[str, torch.Tensor], seed: int, path: Path) -> bytes:
    model = LeNet5Caffe()
    model.load_state_dict(state)
    save(compress(model, CompressConfig(layers=LAYERS, seed=seed)), path, MODEL_META)
    return path.read_bytes()


def test_api_compress_depends_only_on_weights_and_seed(tmp_path: Path) -> None:
    torch.manual_seed(11)
    state = LeNet5Caffe().state_dict()
    torch.manual_seed(1)  # the global RNG must not leak into compression
    first = _compressed_bytes(state, 0, tmp_path / "a.dkm")
    torch.manual_seed(2)
    assert _compressed_bytes(state, 0, tmp_path / "b.dkm") == first
    assert _compressed_bytes(state, 1, tmp_path / "c.dkm") != first
