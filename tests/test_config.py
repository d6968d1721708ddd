from pathlib import Path

import pytest
import yaml

from deepkmeans.config import RunConfig, default_config, from_dict, load_config, to_dict
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


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/c.yaml")


def test_roundtrip_through_yaml() -> None:
    cfg = default_config()
    again = from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert to_dict(again) == to_dict(cfg)
