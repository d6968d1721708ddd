"""ONNX export that stays compressed, checked in ONNX Runtime."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from deepkmeans import CompressConfig, LayerSpec, compress, save, shared_layers  # noqa: E402
from deepkmeans.cli import main  # noqa: E402
from deepkmeans.export import export_onnx  # noqa: E402
from deepkmeans.models.lenet import LeNet5Caffe  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def _run(path: str, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


class Mixed(nn.Module):
    """Conv1d, ConvTranspose1d and Linear; K from 4-bit to 16-bit indexes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 32, 5)
        self.up = nn.ConvTranspose1d(32, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 25, 600)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.up(torch.relu(self.conv(x)))).flatten(1))


@pytest.mark.parametrize(
    "make,example,layers,bits",
    [
        (
            LeNet5Caffe,
            torch.randn(3, 1, 28, 28),
            {"conv*": LayerSpec(16), "fc1": LayerSpec(64, 0.9, d=5), "fc2": LayerSpec(8, d=2)},
            {"conv1": 4, "conv2": 4, "fc1": 8, "fc2": 4},
        ),
        (Mixed, torch.randn(3, 4, 16), {"conv": LayerSpec(12), "up": LayerSpec(40), "fc": LayerSpec(300, d=2)}, None),
    ],
)
def test_compressed_onnx_runs_in_onnxruntime_and_is_smaller(
    tmp_path: Path, make: type, example: torch.Tensor, layers: dict, bits: dict | None
) -> None:
    torch.manual_seed(0)
    model = compress(make(), CompressConfig(layers=layers)).eval()
    small = export_onnx(model, example[:1], tmp_path / "c.onnx")
    full = export_onnx(model, example[:1], tmp_path / "d.onnx", dense=True)
    with torch.no_grad():
        expected = model(example).numpy()
    for path in (small.path, full.path):
        assert np.abs(_run(path, example) - expected).max() <= 1e-5
    widths = {layer.name: layer.index_bits for layer in small.layers}
    assert set(widths) == set(shared_layers(model)) and all(widths.values())
    if bits is not None:
        assert widths == bits
    else:
        assert widths == {"conv": 4, "up": 8, "fc": 16}
    dense_weights = sum(4 * layer.weight().numel() for layer in shared_layers(model).values())
    shared_bytes = small.bytes - (full.bytes - dense_weights)  # what the shared layers cost in the small file
    assert dense_weights / shared_bytes >= 32 / max(widths.values())


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = compress(LeNet5Caffe(), CompressConfig(layers={"*": LayerSpec(8, 0.5)}))
    save(model, tmp_path / "m.dkm", {"name": "lenet5_caffe", "dataset": "mnist"})
    assert main(["export", str(tmp_path / "m.dkm"), "-o", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "fc1: K = 8 centers, 4-bit indexes" in out and "Gather(centers, indexes)" in out
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert np.abs(_run(str(tmp_path / "m.onnx"), x) - model.eval()(x).numpy()).max() <= 1e-5
    assert main(["export", str(tmp_path / "m.dkm"), "-o", str(tmp_path)]) == 2
