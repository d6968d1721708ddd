"""End-to-end CLI runs on synthetic MNIST; user mistakes must end in one line, not a traceback."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepkmeans.cli import main
from deepkmeans.files.checkpoints import load_checkpoint


def _config(tmp_path: Path, mnist_dir: Path, retrain_epochs: int = 1) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data_dir: {mnist_dir}\nout_dir: {tmp_path / 'run'}\ndevice: cpu\n"
        "train: {epochs: 2, batch_size: 32, lr: 0.05}\n"
        f"retrain: {{epochs: {retrain_epochs}, batch_size: 32, lam: 0.01, refresh_every: 5}}\n"
        "compress: {layers: {conv1: {K: 4}, conv2: {K: 8, p: 0.5}, fc1: {K: 8, p: 0.8, d: 5}, fc2: {K: 4, d: 5}}}\n"
    )
    return cfg


def test_run_end_to_end(tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, mnist_dir)
    assert main(["run", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "paper-accounting CR" in out and "file CR" in out
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dense"]["test_acc"] > 0.5  # synthetic digits are easy
    assert metrics["dense"]["val_acc"] is None and metrics["stages"][0]["val_acc"] is None  # nothing held out
    final = metrics["stages"][-1]
    assert final["paper_cr"] > 1 and final["file"] == "model.dkm"
    assert len(metrics["retrain_log"]) == 1 and "hardness" in metrics["retrain_log"][0]["extra"]
    assert (run / "report.md").read_text().startswith("# deepkmeans run")

    # evaluate the written file and checkpoint, compress a checkpoint by hand
    assert main(["evaluate", str(run / "model.dkm"), "--data-dir", str(mnist_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_acc"] == pytest.approx(final["test_acc"])
    assert report["paper_cr"] == pytest.approx(final["paper_cr"]) and report["file_cr"] == pytest.approx(
        final["file_cr"]
    )
    assert main(["evaluate", str(run / "pretrain.ckpt"), "--data-dir", str(mnist_dir)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    out_file = tmp_path / "x.dkm"
    assert main(["compress", str(run / "pretrain.ckpt"), "-o", str(out_file)]) == 0
    assert out_file.is_file()
    (run / "report.md").unlink()
    assert main(["report", str(run)]) == 0 and (run / "report.md").is_file()
    sweep_dir = tmp_path / "sweep"
    argv = ["sweep", str(run / "pretrain.ckpt"), "--data-dir", str(mnist_dir), "--out-dir", str(sweep_dir)]
    assert main([*argv, "--scales", "0.5,1", "--p-offsets", "", "--runs", str(run)]) == 0
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    assert [p["grid"] for p in points] == ["dense", "K", "K", "run", "run"]  # + the run's two compressed models
    assert points[-1]["label"] == "run: re-trained (kmeans) + compressed"
    assert points[-1]["test_acc"] == pytest.approx(final["test_acc"])
    assert (sweep_dir / "sweep.png").is_file()
    assert main([*argv, "--scales", "x"]) == 2
    for ckpt in ("retrain.ckpt", "pretrain.ckpt"):  # every checkpoint of a run names its architecture
        assert load_checkpoint(run / ckpt)["meta"]["name"] == "lenet5_caffe"
        assert main([*argv[:1], str(run / ckpt), *argv[2:], "--scales", "1", "--p-offsets", ""]) == 0
        assert main(["retrain", str(run / ckpt), "--config", str(config), "-o", str(tmp_path / f"re_{ckpt}")]) == 0
        assert load_checkpoint(tmp_path / f"re_{ckpt}")["meta"] == {
            "name": "lenet5_caffe",
            "dataset": "mnist",
            "validation": 0,
        }


def test_train_resumes(tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, mnist_dir)
    ckpt = tmp_path / "d.ckpt"
    assert main(["train", "--config", str(cfg), "-o", str(ckpt), "--epochs", "2"]) == 0
    first = capsys.readouterr().out
    assert "epoch 2/2" in first
    assert main(["train", "--config", str(cfg), "-o", str(ckpt), "--epochs", "2"]) == 0
    assert "epoch" not in capsys.readouterr().out  # nothing left to do: resumed at the end


@pytest.mark.parametrize(
    "argv,match",
    [
        (["evaluate", "{tmp}/missing.dkm"], "no such file"),
        (["evaluate", "{tmp}/junk.bin"], "not a readable checkpoint"),
        (["run", "{tmp}/bad.yaml"], "invalid YAML"),
        (["run", "--data-dir", "{tmp}/nodata", "--out-dir", "{tmp}/o"], "does not exist"),
        (["compress", "{tmp}/missing.ckpt"], "no such file"),
        pytest.param(
            ["run", "--device", "cuda:7", "--out-dir", "{tmp}/o"],
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
    ],
)
def test_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    (tmp_path / "junk.bin").write_bytes(b"\x00junk" * 10)
    (tmp_path / "bad.yaml").write_text("train: [1, 2")
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and err.startswith("deepkmeans: error:") and len(err.strip().splitlines()) == 1


def test_module_help() -> None:
    """`python -m deepkmeans --help` lists each command as an entry of its own, and each has its own --help."""
    result = subprocess.run([sys.executable, "-m", "deepkmeans", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    listed = re.findall(r"^ {4}(\w+) {2,}\S", result.stdout, re.MULTILINE)
    assert listed == [
        "run",
        "train",
        "retrain",
        "compress",
        "tune",
        "finetune",
        "evaluate",
        "energy",
        "sweep",
        "export",
        "import",
        "report",
    ]
    for verb in listed:
        with pytest.raises(SystemExit) as exit_info:
            main([verb, "--help"])
        assert exit_info.value.code == 0


def test_energy_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["energy", "--model", "lenet5_caffe", "--json", "--plot", str(tmp_path / "e.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in result["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert result["totals"]["dense"] > 0 and (tmp_path / "e.png").stat().st_size > 1000
    assert main(["energy"]) == 2
    assert "exactly one of FILE or --model" in capsys.readouterr().err


def _lenet_checkpoint(tmp_path: Path) -> Path:
    """An untrained LeNet-5 as a training checkpoint: the verbs below need its shapes, not its accuracy."""
    from deepkmeans.files.checkpoints import save_checkpoint
    from deepkmeans.job.stages import checkpoint_meta
    from deepkmeans.models import build_model

    torch.manual_seed(0)
    path = tmp_path / "dense.ckpt"
    meta = checkpoint_meta("lenet5_caffe", "mnist", 0)
    save_checkpoint(path, {"stage": "import", "model": build_model("lenet5_caffe").state_dict(), "meta": meta})
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, match: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("deepkmeans: error:") and len(err.strip().splitlines()) == 1, err
    assert match in err, err
    return err


def test_compress_applies_importance_and_bn_reestimate_loading_data_only_for_them(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _lenet_checkpoint(tmp_path)
    files = {}
    for name, extra in (("plain", ""), ("importance", "importance: 2\n"), ("bn", "bn_reestimate: 2\n")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(f"data_dir: {{dir}}\ndevice: cpu\n{extra}compress: {{layers: {{conv1: {{K: 4}}}}}}\n")
        files[name] = tmp_path / f"{name}.dkm"
    for name in files:  # the data folder does not exist: only the options that need training batches load it
        text = (tmp_path / f"{name}.yaml").read_text()
        (tmp_path / f"{name}.yaml").write_text(text.replace("{dir}", str(tmp_path / "nodata")))
    assert main(["compress", str(ckpt), "--config", str(tmp_path / "plain.yaml"), "-o", str(files["plain"])]) == 0
    capsys.readouterr()
    code = main(["compress", str(ckpt), "--config", str(tmp_path / "importance.yaml"), "-o", str(files["importance"])])
    _one_line_error(capsys, code, "does not exist")
    for name in ("importance", "bn"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(path.read_text().replace(str(tmp_path / "nodata"), str(mnist_dir)))
        assert main(["compress", str(ckpt), "--config", str(path), "-o", str(files[name])]) == 0
    err = capsys.readouterr().err
    # importance re-weights conv1's k-means: another file; LeNet-5 has no BatchNorm, and bn_reestimate says so
    assert files["importance"].read_bytes() != files["plain"].read_bytes()
    assert "bn_reestimate = 2, but the model has no BatchNorm layer" in err


@pytest.mark.parametrize("verb", ["run", "compress", "sweep", "retrain"])
def test_a_config_that_names_no_layer_is_refused_by_the_verbs_that_compress(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    cfg = tmp_path / "seed.yaml"
    cfg.write_text(f"seed: 1\ndata_dir: {mnist_dir}\nout_dir: {tmp_path / 'run'}\ndevice: cpu\n")
    argv = {"run": ["run", str(cfg)], "compress": ["compress", "CKPT", "--config", str(cfg)]}
    argv["sweep"] = ["sweep", "CKPT", "--config", str(cfg), "--out-dir", str(tmp_path / "sweep")]
    argv["retrain"] = ["retrain", "CKPT", "--config", str(cfg), "-o", str(tmp_path / "r.ckpt")]
    ckpt = str(_lenet_checkpoint(tmp_path))
    code = main(
        [ckpt if a == "CKPT" else a for a in argv[verb]] + ["-o", str(tmp_path / "m.dkm")] * (verb == "compress")
    )
    _one_line_error(capsys, code, f"compress.layers names no layer, so `deepkmeans {verb}` would compress nothing")
    assert not (tmp_path / "run" / "pretrain.ckpt").exists() and not (tmp_path / "m.dkm").exists()


@pytest.mark.parametrize(
    "layers,match",
    [("{conv9: {K: 4}}", "'conv9' matches no layer of the model"), ("{fc1: {K: 4, d: 7}}", "d=7 does not divide")],
)
def test_run_reports_a_bad_plan_before_pre_training(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str], layers: str, match: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {mnist_dir}\nout_dir: {tmp_path / 'run'}\ndevice: cpu\ncompress: {{layers: {layers}}}\n")
    _one_line_error(capsys, main(["run", str(cfg), "--no-progress"]), match)
    assert not (tmp_path / "run" / "pretrain.ckpt").exists()  # nothing was trained


@pytest.mark.parametrize("layers", ["{conv9: {K: 4}}", "{fc1: {K: 4, d: 7}}"])
def test_retrain_reports_a_bad_plan_before_loading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layers: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'nodata'}\ndevice: cpu\ncompress: {{layers: {layers}}}\n")
    argv = ["retrain", str(_lenet_checkpoint(tmp_path)), "--config", str(cfg), "-o", str(tmp_path / "r.ckpt")]
    _one_line_error(capsys, main(argv), "matches no layer" if "conv9" in layers else "does not divide")


def test_tune_refuses_an_unreachable_target_at_once_and_names_the_reachable_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepkmeans.models import build_model
    from deepkmeans.tuning import Grid, reachable_cr

    ckpt = _lenet_checkpoint(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'nodata'}\nimportance: 4\n")  # no data: tune must stop before it
    code = main(["tune", str(ckpt), "--config", str(cfg), "--target-cr", "100000", "-o", str(tmp_path / "t.yaml")])
    top = reachable_cr(build_model("lenet5_caffe"), Grid())
    err = capsys.readouterr().err
    assert "deepkmeans: warning: importance = 4: `deepkmeans tune` compresses without them" in err
    error = [line for line in err.splitlines() if line.startswith("deepkmeans: error:")]
    assert code == 2 and len(error) == 1 and f"candidates reach at most {top:.1f}x on this model" in error[0]
    assert 1 < top < 100000
