"""Python API: the verbs the CLI calls, usable on any ``nn.Module``.

cm = compress(model, config)          # weights shared in place, codes returned
save(cm, "model.dkm")                 # real file: centers + rANS-coded indexes + the rest
model = load("model.dkm")             # a runnable module again (pass ``model=`` for your own class)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepkmeans.codec import model_file
from deepkmeans.codec.container import MAGIC
from deepkmeans.codec.model_file import CompressedModel
from deepkmeans.compress import Accounting, account, compress
from deepkmeans.errors import ConfigError, DeepKMeansError, FormatError
from deepkmeans.models import build_model
from deepkmeans.regularize.regularizer import KMeansRegularizer
from deepkmeans.train import load_checkpoint

if TYPE_CHECKING:
    from deepkmeans.energy import EnergyResult

__all__ = [
    "Accounting",
    "CompressedModel",
    "KMeansRegularizer",
    "account",
    "compress",
    "is_compressed_file",
    "load",
    "load_compressed",
    "load_model_file",
    "estimate_energy",
    "save",
]


def save(cm: CompressedModel, path: str | Path) -> int:
    """Write a compressed model file (atomically); returns its size in bytes."""
    return model_file.save(cm, path)


def load_compressed(path: str | Path) -> CompressedModel:
    """Read a compressed file into its data form (centers, assignments, other tensors)."""
    return model_file.load(path)


def _restore(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        raise FormatError(f"{source}: tensors do not fit the model ({'; '.join(detail)[:300] or exc})") from None
    return model


def _check_shapes(cm: CompressedModel, model: nn.Module, source: str) -> None:
    """Compare declared shapes with the model before expanding anything (a hostile file stays cheap)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    declared = {f"{n}.weight": tuple(code.shape) for n, code in cm.layers.items()}
    declared.update({k: tuple(v.shape) for k, v in cm.dense.items()})
    if declared.keys() != expected.keys():
        missing = sorted(expected.keys() - declared.keys())[:3]
        extra = sorted(declared.keys() - expected.keys())[:3]
        raise FormatError(f"{source}: tensors do not fit the model (missing {missing}, unexpected {extra})")
    for key, shape in declared.items():
        if shape != expected[key]:
            raise FormatError(f"{source}: tensors do not fit the model ({key} is {shape}, model has {expected[key]})")


def _rebuild(cm: CompressedModel, model: nn.Module | None, source: str) -> nn.Module:
    if model is None:
        name = cm.model.get("name")
        if not isinstance(name, str):
            raise FormatError(f"{source}: file names no built-in architecture; pass model= to load it")
        try:
            model = build_model(name)
        except ConfigError as exc:
            raise FormatError(f"{source}: {exc}") from None
    _check_shapes(cm, model, source)
    return _restore(model, cm.state_dict(), source)


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a runnable model from a compressed file; ``model`` supplies the architecture if given."""
    return _rebuild(load_compressed(path), model, str(path))


def is_compressed_file(path: str | Path) -> bool:
    """True when ``path`` starts with the compressed-file magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_model_file(path: str | Path) -> tuple[nn.Module, dict[str, Any], CompressedModel | None]:
    """Load either a compressed file or a training checkpoint: (model, meta, compressed-or-None)."""
    path = Path(path)
    if not path.exists():
        raise DeepKMeansError(f"{path}: no such file")
    if is_compressed_file(path):
        cm = load_compressed(path)
        meta = {"model": cm.model.get("name"), "dataset": cm.model.get("dataset")}
        return _rebuild(cm, None, str(path)), meta, cm
    state = load_checkpoint(path)
    meta = dict(state.get("meta", {}))
    name = meta.get("model")
    if not isinstance(name, str):
        raise DeepKMeansError(f"{path}: checkpoint does not name its model architecture")
    return _restore(build_model(name), state["model"], str(path)), meta, None


def estimate_energy(
    model: nn.Module, input_shape: tuple[int, ...], cm: CompressedModel | None = None, batch: int = 1
) -> EnergyResult:
    """Row-stationary energy of ``model`` dense vs weight-shared (from ``cm``'s real assignments).

    Index bits per row are the real rANS stream sizes, so the estimate uses what the file stores.
    """
    from deepkmeans.energy import estimate
    from deepkmeans.energy.torch_layers import layers_from_model

    shared = {}
    for name, code in (cm.layers if cm else {}).items():
        words, _ = code.stream
        shared[name] = (code.assignments.numpy(), code.k, words.size * 32 / code.n_rows)
    try:
        layers = layers_from_model(model.cpu().eval(), input_shape, batch, shared)
        return estimate(layers)
    except ValueError as exc:
        raise DeepKMeansError(f"energy model: {exc}") from None
