"""Smoke runs of the benchmarks that produce committed pages: tiny data, one epoch, so they keep running."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_convnet_benchmark_smoke(tmp_path: Path, mnist_dir: Path) -> None:
    convnet = _script("convnet")
    argv = ["--quick", "--data-dir", str(mnist_dir), "--limit", "128", "--validation", "64", "--val-images", "64"]
    argv += [
        "--targets",
        "4",
        "--ks",
        "4,8",
        "--ps",
        "0,0.5",
        "--work",
        str(tmp_path / "w"),
        "--out",
        str(tmp_path / "c.md"),
    ]
    page = convnet.main(argv).read_text()
    methods = (
        "a. scalar sharing (d = 1)",
        "b. row sharing",
        "c. Deep k-Means, spectral",
        "e. d + center",
        "g. frontier",
    )
    for method in methods:
        assert method in page
    assert "MNIST, not CIFAR-10" in page and (tmp_path / "c.png").is_file()
    rendered = convnet.main(["--render", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "c.md")])
    assert rendered.read_text() == page  # the page is rebuilt from the saved rows alone


@pytest.mark.slow
def test_convnet_benchmark_compresses_third_party_weights_as_shipped(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from safetensors.torch import save_file

    from deepkmeans.models import build_model
    from deepkmeans.weights import WEIGHTS

    cache = tmp_path / "cache" / "weights"
    cache.mkdir(parents=True)
    save_file(build_model("digit_cnn").state_dict(), cache / "fake.safetensors")
    monkeypatch.setitem(WEIGHTS, "fake", replace(WEIGHTS["ccexam_mnist"], published="accuracy 12.34% (card)"))
    monkeypatch.setenv("DEEPKMEANS_CACHE", str(tmp_path / "cache"))
    convnet = _script("convnet")
    argv = ["--weights", "fake", "--quick", "--data-dir", str(mnist_dir), "--limit", "128", "--validation", "64"]
    argv += ["--val-images", "64", "--targets", "4", "--ks", "4,8", "--ps", "0,0.5", "--skip-stack"]
    argv += ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "p.md")]
    page = convnet.main(argv).read_text()
    assert "# A network trained by someone else" in page and "`digit_cnn`" in page
    assert "Published: accuracy 12.34% (card)" in page and "macro precision 0." in page
    assert "were part of its training" in page and "WRN-16-4" not in page
    assert not (tmp_path / "w" / "pretrain.ckpt").exists()  # nothing pre-trained: the weights as shipped
    rendered = convnet.main(["--render", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "p.md")])
    assert rendered.read_text() == page


@pytest.mark.slow
def test_convnet_table_rows_are_the_methods_list(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The typed list of methods alone decides what is run, tuned and tabled: with one method left in it, the table
    holds that method's row only and only its family is tuned."""
    convnet = _script("convnet")
    monkeypatch.setattr(convnet, "METHODS", (convnet.B,))
    argv = ["--quick", "--data-dir", str(mnist_dir), "--limit", "128", "--validation", "64", "--val-images", "64"]
    argv += ["--targets", "4", "--ks", "4", "--ps", "0", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "c.md")]
    page = convnet.main(argv).read_text()
    table = [line.split(" | ")[1] for line in page.splitlines() if line.startswith("| 4x |")]
    assert table == [convnet.B.label]
    assert sorted(p.name for p in (tmp_path / "w").glob("sens_*.json")) == ["sens_rows.json"]
    assert sorted(p.name for p in (tmp_path / "w").glob("*.dkm")) == ["b_4x.dkm"]


def test_macro_precision_and_recall_are_per_class_means() -> None:
    import torch

    from deepkmeans.data import Batches

    convnet = _script("convnet")

    class Fixed(torch.nn.Module):  # predicts the class stored in the input
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).float()

    pred, label = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    precision, recall = convnet.macro_precision_recall(Fixed(), Batches(pred[:, None], label, 4, False), "cpu")
    # class 0: 1 of 2 predicted right, 1 of 2 found; class 1: 1/1, 1/2; class 2: 2/3, 2/2
    assert precision == pytest.approx((1 / 2 + 1 + 2 / 3) / 3) and recall == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)


def test_frontier_variants_are_valid_configs_that_change_one_thing(tmp_path: Path) -> None:
    frontier = _script("frontier")
    base = frontier.variant_config("base", 1, tmp_path)
    assert base.seed == base.compress.seed == 1 and base.out_dir == str(tmp_path / "seed1" / "base")
    assert {spec.bits for spec in base.compress.layers.values()} == {8}
    changed = {name: frontier.variant_config(name, 1, tmp_path) for name in frontier.VARIANTS}
    assert changed["distill"].retrain.distill.weight == 0.5 and changed["ramp"].retrain.ramp == 0.5
    assert {s.beta for s in changed["beta"].compress.layers.values()} == {0.01}
    assert changed["importance"].importance == 64 and changed["finetune"].finetune.epochs == 2
    assert {spec.bits for spec in changed["wide32"].compress.layers.values()} == {32}
    for name in ("distill", "ramp", "beta", "importance", "finetune"):
        assert changed[name].train == base.train and changed[name] != base


def test_frontier_wrn_lands_each_variant_on_the_target_size() -> None:
    import torch
    from torch import nn

    from deepkmeans import account, compress

    wrn = _script("frontier_wrn")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    for name in ("plain", "8bit+bn+importance+beta"):
        variant = wrn.VARIANTS[name]
        plain = wrn.Variant(variant.what, variant.K, variant.bits, variant.beta)  # importance needs data
        p = wrn.sparsity_for(model, plain, 25.0, 0, loop=None)
        assert account(compress(model, wrn._layers(plain, p))).paper_cr >= 25.0
        assert account(compress(model, wrn._layers(plain, p - 0.002))).paper_cr < 25.0  # the bisection's step


@pytest.mark.slow
def test_convnet_benchmark_runs_resnet20_on_cifar10_files(tmp_path: Path) -> None:
    """The command docs/cifar.md gives for CIFAR-10, on a tiny folder in the real format."""
    from tests.conftest import make_cifar_dir

    convnet = _script("convnet")
    data = make_cifar_dir(tmp_path / "data", per_batch=16, n_test=16)
    argv = ["--model", "resnet20", "--dataset", "cifar10", "--data-dir", str(data.parent), "--quick"]
    argv += ["--validation", "16", "--val-images", "16", "--targets", "2", "--ks", "4", "--ps", "0", "--skip-stack"]
    argv += ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "c.md")]
    page = convnet.main(argv).read_text()
    assert "(CIFAR-10)" in page and "`resnet20`" in page and "32x32 colour" in page and "not CIFAR-10" not in page
    assert "first 64 training images" in page and "test set (16 images)" in page
