"""The package root is the public surface, and the README's Python API snippet runs exactly as printed."""

import os
import re
from pathlib import Path

import pytest
import torch

import deepkmeans
from deepkmeans.models.lenet import LeNet5Caffe

README = Path(__file__).resolve().parents[1] / "README.md"

PUBLIC = [
    "Accounting",
    "CompressConfig",
    "ConfigError",
    "DeepKMeans",
    "DeepKMeansError",
    "FormatError",
    "LayerAccount",
    "LayerPlan",
    "LayerReport",
    "LayerSpec",
    "Measurement",
    "OnnxExport",
    "PlanWarning",
    "PlannedLayer",
    "RegularizerConfig",
    "SharedWeight",
    "TuneResult",
    "__version__",
    "account",
    "build_plan",
    "compress",
    "estimate_energy",
    "export_onnx",
    "load",
    "load_pretrained",
    "materialize",
    "measure",
    "reestimate_batchnorm_",
    "save",
    "shared_layers",
    "tune",
]


def test_public_surface_is_pinned() -> None:
    assert deepkmeans.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(deepkmeans, name) is not None, name


def _snippet() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_python_api_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole lifecycle as the README prints it: configure, re-train in one's own loop, report, finalize,
    save, load."""
    code = _snippet()
    assert 8 <= len([line for line in code.splitlines() if line.strip() and not line.startswith("#")]) <= 20
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(3)]
    torch.manual_seed(0)
    namespace = {"MyNet": LeNet5Caffe, "loader": loader}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), namespace)
    assert os.path.getsize(tmp_path / "model.dkm") > 0
    loaded, compressed = namespace["model"], namespace["compressed"]
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded.eval()(x), compressed.eval()(x))
    assert not deepkmeans.shared_layers(loaded) and len(deepkmeans.shared_layers(compressed)) == 4


def test_save_with_a_name_makes_a_file_the_command_line_rebuilds(tmp_path: Path) -> None:
    from deepkmeans.files.models import load_model_file

    config = deepkmeans.CompressConfig(layers={"type:Conv2d": deepkmeans.LayerSpec(K=4)})
    shared = deepkmeans.compress(LeNet5Caffe(), config)
    deepkmeans.save(shared, tmp_path / "anon.dkm")
    with pytest.raises(deepkmeans.FormatError, match=r"save\(model, path, name=ARCH\)"):
        load_model_file(tmp_path / "anon.dkm")
    deepkmeans.save(shared, tmp_path / "named.dkm", name="lenet5_caffe")
    loaded = load_model_file(tmp_path / "named.dkm")
    assert loaded.name == "lenet5_caffe" and len(deepkmeans.shared_layers(loaded.model)) == 2
    with pytest.raises(deepkmeans.ConfigError, match="unknown model 'lenet6'"):
        deepkmeans.save(shared, tmp_path / "bad.dkm", name="lenet6")
    assert not (tmp_path / "bad.dkm").exists()


def test_tune_takes_a_data_loader_as_measure_does() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from deepkmeans.data import Batches

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    grid = deepkmeans.tuning.Grid(ks=(4, 8), ps=(0.0,), widths=(32,))

    def run(val):
        torch.manual_seed(0)
        return deepkmeans.tune(LeNet5Caffe(), val, target_cr=8, grid=grid, progress=False)

    result = run(DataLoader(TensorDataset(x, y), batch_size=32))
    assert isinstance(result, deepkmeans.TuneResult)
    assert result.paper_cr >= 8 and set(result.config.layers) <= {"conv1", "conv2", "fc1", "fc2"}
    # the same choice as on Batches of the same images, and from a one-shot iterable of batches too
    assert run(Batches(x, y, 32, False)).config == result.config
    assert run(iter([(x[:32], y[:32]), (x[32:], y[32:])])).config == result.config


def _batches(n: int = 32) -> "deepkmeans.data.Batches":
    from deepkmeans.data import Batches

    gen = torch.Generator().manual_seed(0)
    return Batches(torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen), 16, False)


def test_bad_output_paths_are_typed_errors(tmp_path: Path) -> None:
    shared = deepkmeans.compress(LeNet5Caffe(), {"layers": {"type:Conv2d": {"K": 4}}})
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(deepkmeans.DeepKMeansError, match="is a directory"):
        deepkmeans.save(shared, tmp_path)
    with pytest.raises(deepkmeans.DeepKMeansError, match="the output path is empty"):
        deepkmeans.save(shared, "")
    with pytest.raises(deepkmeans.DeepKMeansError, match="cannot write here"):
        deepkmeans.measure(shared, _batches(), save_to=tmp_path / "file" / "m.dkm")  # a file's name as a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_save_with_a_name_refuses_another_architecture(tmp_path: Path) -> None:
    from deepkmeans.models import build_model

    shared = deepkmeans.compress(build_model("lenet300_100"), {"layers": {"fc1": {"K": 4}}})
    with pytest.raises(deepkmeans.ConfigError, match=r"^name='lenet5_caffe': the model is not a lenet5_caffe \("):
        deepkmeans.save(shared, tmp_path / "a.dkm", name="lenet5_caffe")
    with pytest.raises(deepkmeans.ConfigError, match="the model is not a lenet5_caffe"):
        deepkmeans.save(shared, tmp_path / "b.dkm", {"name": "lenet5_caffe"})
    assert not list(tmp_path.iterdir())
    deepkmeans.save(shared, tmp_path / "c.dkm", {"name": "my own net"})  # a label, not a built-in name
    assert deepkmeans.save(shared, tmp_path / "d.dkm", name="lenet300_100") > 0


def test_configs_may_be_mappings_validated_as_yaml_sections() -> None:
    config = {"layers": {"conv*": {"K": 4, "p": 0.5}, "fc1": deepkmeans.LayerSpec(K=8)}, "seed": 3}
    dkm = deepkmeans.DeepKMeans(LeNet5Caffe(), config, {"method": "kmeans", "lam": 1.0})
    assert dkm.config == deepkmeans.CompressConfig(
        {"conv*": deepkmeans.LayerSpec(K=4, p=0.5), "fc1": deepkmeans.LayerSpec(K=8)}, seed=3
    )
    assert dkm.regularizer == deepkmeans.RegularizerConfig(method="kmeans", lam=1.0)
    assert sorted(dkm.plan.shared) == ["conv1", "conv2", "fc1"]
    with pytest.raises(deepkmeans.ConfigError, match=r"^config: unknown key\(s\) conv\*; valid keys: layers, seed$"):
        deepkmeans.DeepKMeans(LeNet5Caffe(), {"conv*": deepkmeans.LayerSpec(K=4)})
    with pytest.raises(deepkmeans.ConfigError, match=r"^config.layers.conv\*.K must be an integer >= 1, got 0$"):
        deepkmeans.compress(LeNet5Caffe(), {"layers": {"conv*": {"K": 0}}})
    with pytest.raises(deepkmeans.ConfigError, match="^regularizer.lam is required"):
        deepkmeans.DeepKMeans(LeNet5Caffe(), config, {"method": "kmeans"})
    with pytest.raises(deepkmeans.ConfigError, match="expected a CompressConfig or a mapping of its fields, got list"):
        deepkmeans.DeepKMeans(LeNet5Caffe(), ["conv*"])


def test_measure_refuses_empty_data() -> None:
    shared = deepkmeans.compress(LeNet5Caffe(), {"layers": {"type:Conv2d": {"K": 4}}})
    with pytest.raises(deepkmeans.DeepKMeansError, match="^batches: no batches to measure on"):
        deepkmeans.measure(shared, [])
    with pytest.raises(deepkmeans.DeepKMeansError, match="^batches: no samples to measure on"):
        deepkmeans.measure(shared, iter([]))
    with pytest.raises(deepkmeans.DeepKMeansError, match="^val: no samples to measure on"):
        deepkmeans.measure(shared, _batches(), val=(b for b in []))
    assert 0.0 <= deepkmeans.measure(shared, _batches()).test_acc <= 1.0


def test_batchnorm_reestimation_is_public() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10)
    )
    shared = deepkmeans.compress(model, {"layers": {"0": {"K": 2}}})
    assert deepkmeans.reestimate_batchnorm_(shared, _batches()) == 1  # device: the model's; up to 50 batches
    with torch.no_grad():
        h = shared[0](_batches().x)
    # two equal batches: the running mean is the mean of the two batch means, i.e. the mean over all images
    torch.testing.assert_close(shared[1].running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
