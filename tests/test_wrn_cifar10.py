"""Wide ResNet-16-4 presets and an end-to-end run on a synthetic CIFAR-10 folder."""

import json
from pathlib import Path

import pytest
import yaml

from deepkmeans.cli import main
from deepkmeans.config import load_config
from deepkmeans.models.wrn import conv_layer_names, wrn16_4
from deepkmeans.plan import build_plan
from tests.conftest import make_cifar_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_PRESETS = REPO.parent / "shared" / "presets" / "wrn16_4.yaml"
CONFIGS = {"cr45": "wrn16_4_cifar10.yaml", "cr47": "wrn16_4_cifar10_cr47.yaml", "cr50": "wrn16_4_cifar10_cr50.yaml"}


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_configs_reproduce_reference_presets_by_layer_name(preset: str) -> None:
    cfg = load_config(REPO / "configs" / CONFIGS[preset])
    model = wrn16_4()
    names = conv_layer_names(model)
    plan = build_plan(model, cfg.compress)
    # every conv layer configured, in the reference order; the stem's K = N rows leaves it dense, with a note
    assert [pl.name for pl in plan.layers if pl.module_type == "Conv2d"] == names
    assert list(cfg.compress.layers) == names
    assert list(plan.shared) == names[1:]
    assert plan.notes == ("conv1: left dense: K=144 >= its 144 rows of length 3, so sharing would save nothing",)
    if not SHARED_PRESETS.is_file():
        pytest.skip("reference preset file not available")
    ref = yaml.safe_load(SHARED_PRESETS.read_text())[preset]
    assert [cfg.compress.layers[n].K for n in names] == ref["K"]
    assert [cfg.compress.layers[n].p for n in names] == pytest.approx(ref["p"])
    assert [plan.shared[n].spec.K for n in names[1:]] == ref["K"][1:]


@pytest.mark.slow
def test_wrn_run_end_to_end_on_synthetic_cifar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_cifar_dir(tmp_path / "data", per_batch=8, n_test=8)
    cfg = yaml.safe_load((REPO / "configs" / "wrn16_4_cifar10.yaml").read_text())
    cfg.update(data_dir=str(data), out_dir=str(tmp_path / "run"), device="cpu")
    cfg["train"].update(epochs=1, batch_size=20)
    cfg["retrain"].update(epochs=1, batch_size=20, refresh_every=1)
    path = tmp_path / "wrn.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stages"][-1]["bitwise_equal"]
    assert metrics["stages"][-1]["paper_cr"] > 10
    hardness = metrics["retrain_log"][0]["extra"]["hardness"]
    assert len(hardness) == 15 and "conv1" not in hardness  # the stem has K = N rows: left dense
