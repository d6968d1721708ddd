"""ONNX export that stays compressed, checked in ONNX Runtime."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from deepkmeans import CompressConfig, LayerSpec, compress, materialize, save, shared_layers  # noqa: E402
from deepkmeans.cli import main  # noqa: E402
from deepkmeans.errors import DeepKMeansError  # noqa: E402
from deepkmeans.export import export_onnx  # noqa: E402
from deepkmeans.files.checkpoints import save_checkpoint  # noqa: E402
from deepkmeans.models.lenet import LeNet5Caffe  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]


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
    assert "fc1: K = 8 centers, 4-bit indexes" in out and "4 shared layers as Gather(centers, indexes)" in out
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert np.abs(_run(str(tmp_path / "m.onnx"), x) - model.eval()(x).numpy()).max() <= 1e-5
    assert main(["export", str(tmp_path / "m.dkm"), "-o", str(tmp_path)]) == 2


class TransformerMLP(nn.Module):
    """A transformer block's MLP: Linear layers applied to (batch, seq, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 256)
        self.down = nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def test_linear_on_sequence_input_stays_compressed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = compress(TransformerMLP(), CompressConfig(layers={"*": LayerSpec(16)})).eval()
    example = torch.randn(3, 7, 64)
    small = export_onnx(model, example[:1], tmp_path / "c.onnx")
    full = export_onnx(model, example[:1], tmp_path / "d.onnx", dense=True)
    assert {layer.name: layer.index_bits for layer in small.layers} == {"up": 4, "down": 4}
    dense_weights = sum(4 * layer.weight().numel() for layer in shared_layers(model).values())
    shared_bytes = small.bytes - (full.bytes - dense_weights)  # what the shared layers cost in the small file
    assert dense_weights / shared_bytes >= 6  # 4-bit indexes: 8x, less centers, shapes and node names
    with torch.no_grad():
        expected = model(example).numpy()
    assert np.abs(_run(small.path, example) - expected).max() <= 1e-5


def test_float16_model_loads_in_onnxruntime_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = compress(LeNet5Caffe(), CompressConfig(layers={"*": LayerSpec(16)})).eval().half()
    x = torch.randn(4, 1, 28, 28).half()
    result = export_onnx(model, x[:1], tmp_path / "m.onnx")
    assert result.gathered == 4
    session = ort.InferenceSession(result.path)  # refused before: a float32 weight fed a float16 Conv
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.dtype == np.float16
    with torch.no_grad():
        expected = model(x).float().numpy()
    # both compute in float16: within 1% of the largest output (a few float16 roundings)
    assert np.abs(out.astype(np.float32) - expected).max() <= 1e-2 * np.abs(expected).max()


def test_bfloat16_model_is_exported_as_float32_with_one_warning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = compress(TransformerMLP(), CompressConfig(layers={"*": LayerSpec(16)})).eval().bfloat16()
    x = torch.randn(2, 5, 64)
    with pytest.warns(UserWarning, match="bfloat16.*exported as float32") as caught:
        result = export_onnx(model, x[:1].bfloat16(), tmp_path / "m.onnx")
    assert len(caught) == 1 and result.gathered == 2
    assert next(model.parameters()).dtype == torch.bfloat16  # the model given is left as it was
    with torch.no_grad():
        expected = materialize(model).float()(x).numpy()
    assert np.abs(_run(result.path, x) - expected).max() <= 1e-5


QUIET = """
import torch
from deepkmeans import CompressConfig, LayerSpec, compress, export_onnx
from tests.test_export import TransformerMLP
model = compress(TransformerMLP(), CompressConfig(layers={"*": LayerSpec(16)}))
export_onnx(model, torch.randn(1, 3, 64), PATH)
"""


def test_example_of_another_type_is_refused_in_one_line(tmp_path: Path) -> None:
    model = TransformerMLP().half()
    with pytest.raises(DeepKMeansError, match="^the example input is float32 but the model is float16: ") as caught:
        export_onnx(model, torch.randn(1, 3, 64), tmp_path / "m.onnx")
    assert "\n" not in str(caught.value)
    with pytest.raises(DeepKMeansError, match="is a directory"):
        export_onnx(model, torch.randn(1, 3, 64).half(), tmp_path)


def test_export_prints_nothing(tmp_path: Path) -> None:
    # a fresh process: the exporter's loggers write to the stderr they found when torch was imported
    script = QUIET.replace("PATH", repr(str(tmp_path / "m.onnx")))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (done.stdout, done.stderr) == ("", "")
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_export_errors_surface_with_what_the_exporter_said(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    capfd.readouterr()
    with pytest.raises(torch.onnx.OnnxExporterError):
        export_onnx(DataDependent(), torch.randn(2, 3), tmp_path / "bad.onnx")
    assert "x.sum() > 0" in capfd.readouterr().err  # the exporter's account of the failure is shown
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_export_of_a_dense_checkpoint_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_checkpoint(tmp_path / "dense.ckpt", {"model": LeNet5Caffe().state_dict(), "meta": {"name": "lenet5_caffe"}})
    assert main(["export", str(tmp_path / "dense.ckpt"), "-o", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "Gather" not in out and "no shared layer" in out
