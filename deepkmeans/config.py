"""Configuration: dataclasses validated when built, read from and written to YAML.

Every config checks its fields in ``__post_init__``, so a bad value fails where it is made (in Python or
in a YAML file) with a :class:`ConfigError` naming the field path, never later inside the algorithm.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepkmeans.errors import ConfigError

METHODS = ("none", "spectral", "kmeans")
OPTIMIZERS = ("sgd", "adam")
APPLY = ("loss", "gradient")
KMEANS_PATHS = ("auto", "exact", "fast")


def _require(ok: bool, path: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{path} {message}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A real, finite number: no field of a config has a meaning for infinity or NaN."""
    return _is_real(value) and math.isfinite(value)


@dataclass(frozen=True)
class LayerSpec:
    """Per-layer sharing target: K centers, sparsity p, row length d (None: kernel width / 1 for FC).

    ``bits``: the width the centers and the layer's bias are stored at (32; 16: float16; 8: an 8-bit grid per
    tensor). ``beta``: rate-aware assignment (entropy-constrained k-means): each row goes to the center that
    minimizes its squared error, relative to the layer's mean squared deviation, plus ``beta`` times the bits
    of that center's index; 0 is plain k-means. ``kmeans``: 'exact' (k-means++ and Lloyd on all rows), 'fast'
    (centers from a sample, then one exact assignment of every row: minutes less on layers of millions of rows,
    a few percent more error) or 'auto' (fast from ``FAST_MIN_ROWS`` rows; docs/kmeans.md).
    """

    K: int
    p: float = 0.0
    d: int | None = None
    bits: int = 32
    beta: float = 0.0
    kmeans: str = "auto"

    def __post_init__(self) -> None:
        _require(_is_int(self.K) and self.K >= 1, "K", "must be an integer >= 1", self.K)
        _require(_is_number(self.p) and 0.0 <= self.p < 1.0, "p", "must be a number in [0, 1)", self.p)
        _require(self.d is None or (_is_int(self.d) and self.d >= 1), "d", "must be an integer >= 1", self.d)
        _require(self.bits in (32, 16, 8) and _is_int(self.bits), "bits", "must be 32, 16 or 8", self.bits)
        _require(_is_number(self.beta) and self.beta >= 0, "beta", "must be a finite number >= 0", self.beta)
        paths = ", ".join(KMEANS_PATHS)
        _require(
            self.kmeans in KMEANS_PATHS and isinstance(self.kmeans, str),
            "kmeans",
            f"must be one of {paths}",
            self.kmeans,
        )
        object.__setattr__(self, "p", float(self.p))
        object.__setattr__(self, "beta", float(self.beta))


@dataclass(frozen=True)
class CompressConfig:
    """Which layers to share and how: an ordered map from a module name, a glob pattern over names or
    ``type:Class`` to a :class:`LayerSpec` (first match wins; ``None`` leaves the layer dense), and the
    seed of every k-means run (re-training's and compression's alike)."""

    layers: dict[str, LayerSpec | None] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        _require(isinstance(self.layers, dict), "layers", "must be a mapping", self.layers)
        for key, spec in self.layers.items():
            _require(isinstance(key, str) and key != "", "layers", "keys must be non-empty strings", key)
            _require(spec is None or isinstance(spec, LayerSpec), f"layers.{key}", "must be a LayerSpec or None", spec)
        _require(_is_int(self.seed), "seed", "must be an integer", self.seed)


LAM_HELP = (
    "the penalty's weight against the task loss has no value that fits every model (R sums squared residuals "
    "over a layer's weights): 2.0 on LeNet-5 and LeNet-300-100 (configs/lenet5_mnist.yaml), 0.001 on WRN-16-4 "
    "(the paper's)"
)


def _check_lam(lam: Any, required: bool) -> None:
    if lam is None:
        _require(not required, "lam", f"is required: {LAM_HELP}", lam)
        return
    _require(_is_number(lam) and lam >= 0, "lam", "must be a finite number >= 0", lam)


@dataclass(frozen=True)
class RegularizerConfig:
    """Deep k-Means penalty: (lam/2) * sum_l R(W_l, F_l), F refreshed every ``refresh_every`` steps (T).

    ``method``: 'kmeans' (exact indicator form), 'spectral' (the paper's relaxation) or 'none'.
    ``apply``: 'loss' makes ``penalty()`` a differentiable term to add to the loss (works with any loss and
    under DDP); 'gradient' adds its gradient ``lam * (W - W F F^T)`` to each weight's ``.grad`` right after
    ``backward()`` instead: no autograd graph and no saved residual (less memory; one process only), and
    ``penalty()`` gives its current value, detached.
    ``ramp_steps``: over the first this many steps, lam and every layer's sparsity p rise linearly from 0 to
    their values (p at each refresh of F); 0: both fixed from the start.
    ``lam`` has no default (required unless ``method='none'``): R sums squared residuals over every weight
    of a layer, so the weight that balances it against the task loss depends on the model (see LAM_HELP).
    """

    method: str = "kmeans"
    lam: float | None = None
    refresh_every: int = 100
    apply: str = "loss"
    ramp_steps: int = 0

    def __post_init__(self) -> None:
        _require(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}", self.method)
        ramp = self.ramp_steps
        _require(_is_int(ramp) and ramp >= 0, "ramp_steps", "must be an integer >= 0", ramp)
        _require(self.apply in APPLY, "apply", f"must be one of {', '.join(APPLY)}", self.apply)
        _check_lam(self.lam, self.method != "none")
        _require(
            _is_int(self.refresh_every) and self.refresh_every >= 1,
            "refresh_every",
            "must be an integer >= 1",
            self.refresh_every,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Training with SGD + momentum (or Adam, its beta1 = momentum) and a cosine learning-rate schedule."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        _require(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}", self.optimizer)
        _require(_is_int(self.epochs) and self.epochs >= 0, "epochs", "must be an integer >= 0", self.epochs)
        _require(
            _is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "must be an integer >= 1", self.batch_size
        )
        _require(_is_number(self.lr) and self.lr > 0, "lr", "must be a finite number > 0", self.lr)
        _require(_is_number(self.momentum) and 0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        _require(
            _is_number(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            "must be a finite number >= 0",
            self.weight_decay,
        )


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from the dense model: the loss becomes ``(1 - weight) * cross-entropy + weight *
    T^2 * KL(softmax(teacher / T) || softmax(student / T))`` with ``T = temperature``; weight 0: off."""

    weight: float = 0.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        w, t = self.weight, self.temperature
        _require(_is_number(w) and 0 <= w <= 1, "weight", "must be a number in [0, 1]", w)
        _require(_is_number(t) and t > 0, "temperature", "must be a finite number > 0", t)
        object.__setattr__(self, "weight", float(w))
        object.__setattr__(self, "temperature", float(t))


def _check_distill(distill: Any) -> None:
    _require(isinstance(distill, DistillConfig), "distill", "must be a DistillConfig", distill)


@dataclass(frozen=True)
class RetrainConfig(TrainConfig):
    """Deep k-Means re-training: the training settings plus the penalty's (see :class:`RegularizerConfig`)."""

    epochs: int = 0
    lr: float = 0.01
    weight_decay: float = 0.0
    method: str = "kmeans"
    lam: float | None = None  # required when re-training with a penalty (see RegularizerConfig)
    refresh_every: int = 100
    apply: str = "loss"
    ramp: float = 0.0  # fraction of the re-training steps over which lam and p rise from 0 (gradual hardness)
    distill: DistillConfig = field(default_factory=DistillConfig)  # from the pre-trained dense model

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_lam(self.lam, self.epochs > 0 and self.method != "none")
        RegularizerConfig(self.method, self.lam or 0.0, self.refresh_every, self.apply)  # validates the rest
        _require(_is_number(self.ramp) and 0 <= self.ramp <= 1, "ramp", "must be a number in [0, 1]", self.ramp)
        _check_distill(self.distill)

    @property
    def regularizer(self) -> RegularizerConfig:
        return self.regularizer_for(0)

    def regularizer_for(self, steps_per_epoch: int) -> RegularizerConfig:
        """The penalty's settings, the ``ramp`` fraction of ``epochs * steps_per_epoch`` steps made a step count."""
        ramp_steps = round(self.ramp * self.epochs * steps_per_epoch)
        return RegularizerConfig(self.method, self.lam, self.refresh_every, self.apply, ramp_steps)


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Center fine-tuning after compression: the assignments stay fixed, the centers (and biases, BatchNorm)
    are trained, each center by the gradient summed over its rows. The file size does not change.

    Adam by default: a center's gradient is summed over its rows, so a dominant cluster (sparsity p) gets a
    gradient thousands of times larger than a small one, and one SGD learning rate cannot suit both.
    """

    epochs: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"
    distill: DistillConfig = field(default_factory=DistillConfig)  # from the pre-trained dense model

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_distill(self.distill)


DATASETS = ("mnist", "fashion_mnist", "cifar10")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``deepkmeans run`` needs: model, data, the stages, and where to write."""

    model: str = "lenet5_caffe"
    dataset: str = "mnist"
    data_dir: str | None = None
    out_dir: str = "runs/lenet5_mnist"
    seed: int = 0
    device: str = "auto"
    validation: int = 0  # the last n training examples, held out of training for choices (e.g. by tune)
    importance: int = 0  # data-aware k-means: training batches whose squared gradients weight each weight (0: off)
    bn_reestimate: int = 0  # training batches to re-estimate BatchNorm statistics on after compression (0: off)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        from deepkmeans.models import model_info

        model_info(self.model)
        _require(self.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}", self.dataset)
        _require(
            isinstance(self.out_dir, str) and self.out_dir.strip() != "",
            "out_dir",
            "must be a folder path",
            self.out_dir,
        )
        _require(_is_int(self.seed), "seed", "must be an integer", self.seed)
        valid = _is_int(self.validation) and self.validation >= 0
        _require(valid, "validation", "must be an integer >= 0", self.validation)
        valid = _is_int(self.importance) and self.importance >= 0
        _require(valid, "importance", "must be an integer >= 0 (training batches)", self.importance)
        valid = _is_int(self.bn_reestimate) and self.bn_reestimate >= 0
        _require(valid, "bn_reestimate", "must be an integer >= 0 (training batches)", self.bn_reestimate)


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
        return value if isinstance(value, tp) else from_dict(tp, value, where)  # built already: validated
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(val_tp, v, _join(where, k)) for k, v in value.items()}
    if tp is float:  # the type only: each config's range check names the valid range (finite included)
        if not _is_real(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if not _is_int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    return value


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and invalid values name their key path."""
    at = where or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{at}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        raise ConfigError(f"{at}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(_join(where, exc)) from None
    except TypeError as exc:
        raise ConfigError(f"{at}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data form of a config (for YAML, metrics JSON and reports)."""
    return dataclasses.asdict(obj)


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML run config; ``None`` gives the embedded default (LeNet-5 on MNIST)."""
    if path is None:
        return default_config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    try:
        return from_dict(RunConfig, data or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
