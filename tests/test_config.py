from pathlib import Path

import pytest
import yaml

from deepkmeans.config import (
    CompressConfig,
    LayerSpec,
    RegularizerConfig,
    RetrainConfig,
    RunConfig,
    TrainConfig,
    default_config,
    from_dict,
    load_config,
    to_dict,
)
from deepkmeans.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_default_yaml_matches_embedded_default() -> None:
    assert to_dict(load_config(REPO / "configs" / "lenet5_mnist.yaml")) == to_dict(default_config())


@pytest.mark.parametrize(
    "text,match",
    [
        ("model: nosuch", "unknown model"),
        ("bogus: 1", "unknown key"),
        ("compress: {layers: {conv1: {K: 0}}}", "K must be"),
        ("compress: {layers: {conv1: {K: 4, p: 1.0}}}", "p must be"),
        ("compress: {layers: {conv1: {K: 4, d: 0}}}", "d must be"),
        ("train: {epochs: -1}", "epochs"),
        ("train: {lr: abc}", "expected a number"),
        ("retrain: {method: magic}", "method"),
        ("train: [1, 2", "invalid YAML"),
        ("- 1\n- 2", "expected a mapping"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


@pytest.mark.parametrize(
    "text,where",
    [
        (
            "compress: {layers: {conv1: {K: 4, beta: .inf}}}",
            r"compress\.layers\.conv1\.beta must be a finite number >= 0",
        ),
        (
            "compress: {layers: {conv1: {K: 4, beta: .nan}}}",
            r"compress\.layers\.conv1\.beta must be a finite number >= 0",
        ),
        ("retrain: {distill: {temperature: .inf}}", r"retrain\.distill\.temperature must be a finite number > 0"),
        ("finetune: {distill: {temperature: .nan}}", r"finetune\.distill\.temperature must be a finite number > 0"),
        ("retrain: {lam: .inf}", r"retrain\.lam must be a finite number >= 0"),
        ("train: {lr: .inf}", r"train\.lr must be a finite number > 0"),
        ("train: {weight_decay: .inf}", r"train\.weight_decay must be a finite number >= 0"),
    ],
)
def test_infinite_and_nan_numbers_are_refused_with_file_key_and_range(tmp_path: Path, text: str, where: str) -> None:
    """No number of a config means anything at infinity or NaN (a beta of .inf would put every row on one center)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"c\.yaml: {where}, got (inf|nan)"):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/c.yaml")


def test_roundtrip_through_yaml() -> None:
    cfg = default_config()
    again = from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: LayerSpec(K=0), "K must be an integer >= 1, got 0"),
        (lambda: LayerSpec(K="8"), "K must be an integer >= 1, got '8'"),
        (lambda: LayerSpec(K=True), "K must be an integer"),
        (lambda: LayerSpec(K=4, p=2.0), "p must be a number in \\[0, 1\\), got 2.0"),
        (lambda: LayerSpec(K=4, d=0), "d must be an integer >= 1"),
        (lambda: LayerSpec(K=4, kmeans="quick"), "kmeans must be one of auto, exact, fast, got 'quick'"),
        (lambda: LayerSpec(K=4, kmeans=True), "kmeans must be one of auto, exact, fast, got True"),
        (lambda: CompressConfig(layers={"conv1": LayerSpec(K=0, p=2.0)}), "K must be"),
        (lambda: CompressConfig(layers={"conv1": {"K": 4}}), "layers.conv1 must be a LayerSpec or None"),
        (lambda: RegularizerConfig(lam=-1.0), "lam must be a finite number >= 0"),
        (lambda: RegularizerConfig(lam=1.0, refresh_every=0), "refresh_every must be an integer >= 1"),
        (lambda: RegularizerConfig(), "lam is required: the penalty's weight"),
        (lambda: RetrainConfig(epochs=1), "lam is required"),
        (lambda: RegularizerConfig(method="magic"), "method must be one of none, spectral, kmeans"),
        (lambda: RetrainConfig(lam=-0.5), "lam must be"),
        (lambda: TrainConfig(batch_size=0), "batch_size must be"),
    ],
)
def test_configs_built_in_python_are_validated(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()


def test_yaml_errors_name_the_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("compress: {layers: {conv1: {K: 4}, fc1: {K: 0}}}")
    with pytest.raises(ConfigError, match=r"c\.yaml: compress\.layers\.fc1\.K must be an integer >= 1, got 0"):
        load_config(path)
    path.write_text("compress: {layers: {conv1: {K: 4, kmeans: faster}}}")
    with pytest.raises(ConfigError, match=r"c\.yaml: compress\.layers\.conv1\.kmeans must be one of auto, exact, fast"):
        load_config(path)
    path.write_text("retrain: {refresh_every: 0}")
    with pytest.raises(ConfigError, match=r"retrain\.refresh_every must be an integer >= 1"):
        load_config(path)


def test_null_layer_spec_leaves_the_layer_dense(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("compress: {layers: {conv1: null, '*': {K: 4}}}")
    cfg = load_config(path)
    assert cfg.compress.layers == {"conv1": None, "*": LayerSpec(4)}
    assert to_dict(from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))) == to_dict(cfg)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    """What `deepkmeans run CONFIG` reads for each documented figure passes validation (e.g. names its lam)."""
    cfg = load_config(path)
    assert cfg.retrain.epochs == 0 or cfg.retrain.method == "none" or cfg.retrain.lam is not None
