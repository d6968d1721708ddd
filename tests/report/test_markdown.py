"""report.md is rebuilt from a run folder's files alone: measured numbers in, existing images linked."""

import json
import re
import shutil
from pathlib import Path

import pytest

from deepkmeans.cli import main
from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.models import load_compressed, save_compressed
from deepkmeans.report.markdown import hardness_history, write_report
from deepkmeans.results import RunFiles, RunMetrics
from tests.conftest import make_mnist_dir
from tests.report.test_plots import assert_png
from tests.test_cli import _config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `deepkmeans run` with re-training on synthetic MNIST, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("report")
    assert main(["run", str(_config(tmp, make_mnist_dir(tmp / "mnist"))), "--no-progress"]) == 0
    return tmp / "run"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy without the figures, so each test sees what write_report itself draws."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("*.png", "report.md"))
    return out


def _images(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


def test_report_with_retraining(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path)
    shutil.copy(run_dir / "energy.png", run / "energy.png")
    path = write_report(run)
    assert path == run / "report.md"
    text = path.read_text()
    metrics = RunMetrics.read(RunFiles(run))

    accuracies = [metrics.dense.test_acc] + [s.test_acc for s in metrics.stages]
    accuracies += [e.test_acc for e in metrics.retrain_log]
    for acc in accuracies:
        assert f"{100 * acc:.2f}%" in text
    assert len(metrics.stages) == 2
    for stage in metrics.stages:
        assert f"{stage.paper_cr:.1f}x" in text and f"{stage.file_cr:.1f}x" in text
    for epoch, layers in hardness_history(metrics).items():
        assert f"| {epoch} |" in text and all(f"{h:.4f}" in text for h in layers.values())
    assert "| fc1 |" in text and "re-trained (kmeans) + compressed" in text

    images = _images(text)
    expected = {"memory_share.png", "filters_conv1.png", "filters_conv2.png", "rows_fc1.png", "hardness.png"}
    assert expected | {"energy.png"} == set(images)
    for name in images:
        assert not Path(name).is_absolute()
        assert_png(run / name, 2000)
    assert "Skipped" not in text


def test_report_without_retraining(run_dir: Path, tmp_path: Path) -> None:
    """The folder `deepkmeans run` leaves when retrain.epochs = 0: no retrain.ckpt, no model.dkm."""
    run = _copy(run_dir, tmp_path)
    (run / "retrain.ckpt").unlink()
    (run / "model.dkm").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["config"]["retrain"]["epochs"] = 0
    metrics["retrain_log"] = []
    metrics["stages"] = metrics["stages"][:1]
    metrics["hardness"] = {"0": metrics["hardness"]["0"]}
    metrics["energy"] = None
    (run / "metrics.json").write_text(json.dumps(metrics))

    text = write_report(run).read_text()
    assert f"{100 * metrics['stages'][0]['test_acc']:.2f}%" in text
    assert "Re-training did not run (retrain.epochs = 0)" in text and "re-trained (" not in text
    assert "Skipped: re-training did not run." in text
    assert "Skipped: metrics.json holds no energy estimate." in text
    images = _images(text)
    assert set(images) == {"memory_share.png", "filters_conv1.png", "filters_conv2.png"}
    assert all((run / name).is_file() for name in images)


def test_report_for_an_architecture_it_cannot_rebuild(run_dir: Path, tmp_path: Path) -> None:
    run = _copy(run_dir, tmp_path)
    for name in ("no_retrain.dkm", "model.dkm"):
        cm = load_compressed(run / name)
        cm.model = {"name": "my_net", "dataset": "mnist"}
        save_compressed(cm, run / name)

    text = write_report(run).read_text()
    assert "Per-layer table and memory chart skipped: the architecture could not be rebuilt" in text
    assert "my_net" in text
    images = _images(text)
    assert "memory_share.png" not in images and {"filters_conv1.png", "rows_fc1.png"} <= set(images)
    assert all((run / name).is_file() for name in images)


def test_report_needs_metrics(tmp_path: Path) -> None:
    with pytest.raises(DeepKMeansError, match="no metrics.json"):
        write_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(DeepKMeansError, match="not valid JSON"):
        write_report(tmp_path)
    (tmp_path / "metrics.json").write_text('{"dense": {"test_acc": 0.5}}')
    with pytest.raises(DeepKMeansError, match="not the metrics of a deepkmeans run"):
        write_report(tmp_path)
