"""Run configuration: dataclasses <-> YAML, validated with messages a user can act on."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepkmeans.errors import ConfigError

METHODS = ("none", "spectral", "kmeans")


@dataclass
class LayerSpec:
    """Per-layer sharing target: K centers, sparsity p, row length d (None: kernel width / 1 for FC)."""

    K: int
    p: float = 0.0
    d: int | None = None

    def validate(self, where: str) -> None:
        if not isinstance(self.K, int) or self.K < 1:
            raise ConfigError(f"{where}: K must be an integer >= 1, got {self.K!r}")
        if not 0.0 <= float(self.p) < 1.0:
            raise ConfigError(f"{where}: p must be in [0, 1), got {self.p!r}")
        if self.d is not None and (not isinstance(self.d, int) or self.d < 1):
            raise ConfigError(f"{where}: d must be an integer >= 1, got {self.d!r}")


@dataclass
class CompressConfig:
    """Which layers to share and how. Keys are module names or glob patterns; first match wins."""

    layers: dict[str, LayerSpec] = field(default_factory=dict)
    seed: int = 0

    def validate(self) -> None:
        for name, spec in self.layers.items():
            spec.validate(f"compress.layers.{name}")


@dataclass
class TrainConfig:
    """Pre-training with SGD + momentum and a cosine learning-rate schedule."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def validate(self, where: str = "train") -> None:
        if self.epochs < 0:
            raise ConfigError(f"{where}.epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{where}.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class RetrainConfig(TrainConfig):
    """Deep k-Means re-training: task loss + (lam/2) * sum of per-layer k-means penalties.

    ``method``: 'kmeans' (exact indicator form), 'spectral' (the paper's relaxation) or 'none'
    (plain fine-tuning, for comparison). F is refreshed every ``refresh_every`` iterations (T).
    """

    epochs: int = 0
    lr: float = 0.01
    weight_decay: float = 0.0
    method: str = "kmeans"
    lam: float = 1e-3
    refresh_every: int = 100

    def validate(self, where: str = "retrain") -> None:
        super().validate(where)
        if self.method not in METHODS:
            raise ConfigError(f"{where}.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.lam < 0:
            raise ConfigError(f"{where}.lam must be >= 0, got {self.lam}")
        if self.refresh_every < 1:
            raise ConfigError(f"{where}.refresh_every must be >= 1, got {self.refresh_every}")


@dataclass
class RunConfig:
    """Everything ``deepkmeans run`` needs: model, data, the three stages, and where to write."""

    model: str = "lenet5_caffe"
    dataset: str = "mnist"
    data_dir: str | None = None
    out_dir: str = "runs/lenet5_mnist"
    seed: int = 0
    device: str = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)

    def validate(self) -> None:
        from deepkmeans.models import model_info

        model_info(self.model)
        if self.dataset not in ("mnist", "cifar10"):
            raise ConfigError(f"dataset must be 'mnist' or 'cifar10', got {self.dataset!r}")
        self.train.validate()
        self.retrain.validate()
        self.compress.validate()


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a parsed YAML value to the annotated type, rejecting what does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are errors that list the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data form of a config (for YAML, metrics JSON and reports)."""
    return dataclasses.asdict(obj)


def load_config(path: str | Path | None) -> RunConfig:
    """Read and validate a YAML run config; ``None`` gives the embedded default (LeNet-5 on MNIST)."""
    if path is None:
        cfg = default_config()
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}: invalid YAML{at}: {getattr(exc, 'problem', exc)}") from None
        cfg = from_dict(RunConfig, data or {}, str(path))
    cfg.validate()
    return cfg


def default_config() -> RunConfig:
    """The embedded default: LeNet-5-Caffe on MNIST (mirrored by configs/lenet5_mnist.yaml)."""
    return RunConfig(
        retrain=RetrainConfig(epochs=14, lam=2.0),
        compress=CompressConfig(
            layers={
                "conv1": LayerSpec(K=32, p=0.0),
                "conv2": LayerSpec(K=32, p=0.5),
                "fc1": LayerSpec(K=64, p=0.92, d=5),
                "fc2": LayerSpec(K=32, p=0.5, d=2),
            }
        ),
    )
