"""Models to files and back: the compressed ``.dkm`` file (``save`` / ``load``) and training checkpoints.

``save`` writes a model whose layers were shared (:func:`deepkmeans.compress` or ``DeepKMeans.finalize``):
centers, rANS-coded assignments, each BatchNorm in inference form (or tensor by tensor: ``batchnorm="full"``)
and every other tensor. ``load`` rebuilds a runnable model, dense (``materialize=True``) or compact, with each
shared layer holding only its centers and narrow indexes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deepkmeans.codec import model_file
from deepkmeans.codec.container import MAGIC
from deepkmeans.codec.model_file import CompressedModel, LayerCode
from deepkmeans.errors import ConfigError, DeepKMeansError, FormatError
from deepkmeans.files.atomic import check_writable, write_atomic
from deepkmeans.files.checkpoints import load_checkpoint
from deepkmeans.models import MODELS, build_model, model_info
from deepkmeans.shared import share_, shared_layers, shared_state_keys


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


BATCHNORM_FORMS = ("inference", "half", "full")
_NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def unit_variance(eps: float) -> float | None:
    """A float32 ``v`` with ``v + eps == 1`` in float32, so a BatchNorm with running_var ``v`` divides by exactly 1
    (None when ``eps`` is outside [0, 1))."""
    if not 0.0 <= eps < 1.0:
        return None
    one, e = np.float32(1.0), np.float32(eps)
    near = one - e  # within half a unit in the last place of the answer, if there is one
    for v in (near, np.nextafter(near, np.float32(0)), np.nextafter(near, np.float32(2))):
        if v > 0 and v + e == one:
            return float(v)
    return None


def _foldable(module: nn.Module) -> bool:
    """A float32 BatchNorm with affine parameters, running statistics and an eps a unit variance exists for."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.affine:
        return False
    if not module.track_running_stats or module.running_mean is None or unit_variance(module.eps) is None:
        return False
    tensors = (module.weight, module.bias, module.running_mean, module.running_var)
    return all(t.dtype == torch.float32 for t in tensors)


@torch.no_grad()
def inference_form(module: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``[scale, shift]`` (2, C) float32 of a BatchNorm in eval mode: the per-channel linear map PyTorch's CPU
    kernel applies, scale as it computes it and shift taken from the kernel itself (the output for a zero input),
    so a module holding weight = scale, bias = shift, running_mean = 0 and a unit variance computes the same bits."""
    weight, bias = module.weight.detach().cpu(), module.bias.detach().cpu()
    mean, var = module.running_mean.cpu(), module.running_var.cpu()
    one, eps = np.float32(1.0), np.float32(module.eps)  # float32 steps, each rounded as the kernel rounds it
    scale = torch.from_numpy(one / np.sqrt(var.numpy() + eps) * weight.numpy())
    shift = F.batch_norm(torch.zeros(1, weight.numel()), mean, var, weight, bias, False, 0.0, module.eps)[0]
    return torch.stack([scale, shift])


def _batchnorm_forms(model: nn.Module, batchnorm: str) -> dict[str, torch.Tensor]:
    """The BatchNorm modules ``batchnorm`` stores in inference form, none of whose tensors is tied elsewhere."""
    counts = Counter(_tensor_key(t) for t in model.state_dict().values() if t.numel())
    taken = {key for key, n in counts.items() if n > 1}
    if batchnorm not in BATCHNORM_FORMS:
        raise ConfigError(f"batchnorm must be one of {', '.join(BATCHNORM_FORMS)}, got {batchnorm!r}")
    if batchnorm == "full":
        return {}
    dtype = torch.float16 if batchnorm == "half" else torch.float32
    forms = {}
    for name, module in model.named_modules():
        if _foldable(module) and not {_tensor_key(t) for t in module.state_dict().values() if t.numel()} & taken:
            forms[name] = inference_form(module).to(dtype)
    return forms


def to_compressed(model: nn.Module, meta: dict[str, Any] | None = None, batchnorm: str = "full") -> CompressedModel:
    """The data form of a model with shared layers: codes, BatchNorm in the form ``batchnorm`` names (see
    :func:`save`), every other tensor once (ties become aliases), and ``meta`` (e.g. its name)."""
    codes = {}
    modules = dict(model.named_modules())
    skip = shared_state_keys(model)
    for name, layer in shared_layers(model).items():
        param = layer.param
        bias = getattr(modules[name], "bias", None) if param.bits < 32 else None
        bias = bias if isinstance(bias, nn.Parameter) else None
        codes[name] = LayerCode(
            param.shape,
            param.d,
            param.p,
            layer.centers.detach().cpu(),
            param.assignments.cpu(),
            layer.tied,
            coded=param.stream(),
            bits=param.bits,
            grid=param.grid,
            bias=None if bias is None else bias.detach().cpu(),
            bias_grid=param.bias_grid,
        )
        if bias is not None:
            skip.add(f"{name}.bias")
    dense: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    state = model.state_dict()
    norms = _batchnorm_forms(model, batchnorm)
    skip |= {f"{name}.{key}" for name in norms for key in _NORM_KEYS}
    for key, tensor in state.items():
        if key in skip:
            continue
        if tensor.numel() and _tensor_key(tensor) in first:
            aliases[key] = first[_tensor_key(tensor)]
            continue
        first.setdefault(_tensor_key(tensor), key)
        dense[key] = tensor.detach().cpu()
    return CompressedModel(codes, dense, dict(meta or {}), aliases, norms)


def default_batchnorm(model: nn.Module) -> str:
    """``half`` when every shared layer is stored at 16 or 8 bits, else ``inference``."""
    layers = shared_layers(model).values()
    return "half" if layers and all(layer.param.bits < 32 for layer in layers) else "inference"


def stored_state(model: nn.Module, batchnorm: str | None = None) -> dict[str, torch.Tensor]:
    """``model``'s state dict as the file ``save(model, ..., batchnorm=batchnorm)`` writes reads back: each
    BatchNorm stored in inference form holds its scale, shift and unit variance instead of its statistics."""
    cm = CompressedModel({}, {}, norms=_batchnorm_forms(model, batchnorm or default_batchnorm(model)))
    return model.state_dict() | _norm_states(cm, model, "model")


def save(
    model: nn.Module,
    path: str | Path,
    meta: dict[str, Any] | None = None,
    name: str | None = None,
    batchnorm: str | None = None,
) -> int:
    """Write ``model`` (shared layers as centers + coded indexes) to a compressed file atomically; returns its
    size in bytes. ``meta`` is stored with it; ``name`` (or ``meta["name"]``) names the built-in architecture
    ``load`` and the command line rebuild without a ``model=``.

    ``batchnorm``: ``"inference"`` stores each float32 BatchNorm as a per-channel scale and shift (float32; the
    model read back computes the same eval outputs, but its running statistics are gone: training it further
    starts from the folded form); ``"half"`` the same in float16 (the default when every shared layer is stored
    at 16 or 8 bits, else ``"inference"``); ``"full"`` every BatchNorm tensor as it is (lossless)."""
    meta = dict(meta or {})
    if name is not None:
        model_info(name)  # an unknown name fails here, before a file names it
        meta["name"] = name
    check_writable(path)
    cm = to_compressed(model, meta, batchnorm or default_batchnorm(model))
    _check_named(cm, meta.get("name"), name is not None)
    return save_compressed(cm, path)


def _check_named(cm: CompressedModel, name: Any, required: bool) -> None:
    """A file that names a built-in architecture must be one ``load`` can rebuild as it: same tensors, same
    shapes. ``required``: the name was given as ``name=`` (a ``meta`` name that is no built-in one is a label)."""
    if not isinstance(name, str) or (not required and name not in MODELS):
        return
    misfit = _misfit(cm, build_model(name), f"name={name!r}")
    if misfit:
        raise ConfigError(f"name={name!r}: the model is not a {name} ({misfit})")


def save_compressed(cm: CompressedModel, path: str | Path) -> int:
    """Write a compressed model's data form to ``path`` atomically; returns the file's size in bytes."""
    data = model_file.to_bytes(cm)
    write_atomic(path, data)
    return len(data)


def load_compressed(path: str | Path, max_weights: int | None = None) -> CompressedModel:
    """Read a compressed file into its data form (centers, assignments, other tensors); ``max_weights``
    overrides the bound on the shared weights it may declare (by default, from the file's size)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a compressed file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from None
    return model_file.from_bytes(data, str(path), max_weights)


def _check_shapes(cm: CompressedModel, model: nn.Module, source: str) -> None:
    """Compare declared shapes with the model before expanding anything (a hostile file stays cheap)."""
    if shared_layers(model):
        raise DeepKMeansError(f"{source}: pass a plain (not compressed) instance of the architecture as model=")
    misfit = _misfit(cm, model, source)
    if misfit:
        raise FormatError(f"{source}: tensors do not fit the model ({misfit})")


def _misfit(cm: CompressedModel, model: nn.Module, source: str) -> str:
    """How the tensors ``cm`` declares differ from ``model``'s state dict ('' when they fit)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    declared = cm.shapes() | {k: tuple(v.shape) for k, v in _norm_states(cm, model, source).items()}
    if declared.keys() != expected.keys():
        missing = sorted(expected.keys() - declared.keys())[:3]
        extra = sorted(declared.keys() - expected.keys())[:3]
        return f"missing {missing}, unexpected {extra}"
    for key, shape in declared.items():
        if shape != expected[key]:
            return f"{key} is {shape}, the architecture has {expected[key]}"
    return ""


def _norm_states(cm: CompressedModel, model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """The state of each BatchNorm the file stores in inference form: weight = scale, bias = shift,
    running_mean = 0, running_var = a unit variance for the module's eps, num_batches_tracked = 0."""
    modules = dict(model.named_modules())
    state = {}
    for name, form in cm.norms.items():
        module = modules.get(name)
        if module is None or not _foldable(module) or module.num_features != form.shape[1]:
            raise FormatError(
                f"{source}: tensors do not fit the model ({name!r} is stored as a BatchNorm in inference form,"
                " and the model has no BatchNorm of that width there)"
            )
        scale, shift = form.to(torch.float32).unbind()
        variance = torch.full_like(scale, unit_variance(module.eps))
        values = (scale, shift, torch.zeros_like(scale), variance, torch.zeros((), dtype=torch.long))
        state.update({f"{name}.{key}": value for key, value in zip(_NORM_KEYS, values, strict=True)})
    return state


def _architecture(cm: CompressedModel, source: str) -> nn.Module:
    name = cm.model.get("name")
    if not isinstance(name, str):
        raise FormatError(
            f"{source}: file names no built-in architecture; pass model= to load it in Python, or save it with "
            "save(model, path, name=ARCH) (ARCH a built-in model) for the command line to rebuild it"
        )
    try:
        return build_model(name)
    except ConfigError as exc:
        raise FormatError(f"{source}: {exc}") from None


def rebuild(
    cm: CompressedModel, model: nn.Module | None = None, materialize: bool = True, source: str = ""
) -> nn.Module:
    """A runnable model from the data form: dense weights, or (``materialize=False``) compact shared layers."""
    source = source or "compressed model"
    model = _architecture(cm, source) if model is None else model
    _check_shapes(cm, model, source)
    state = (cm.state_dict() if materialize else cm.state_dict_dense()) | _norm_states(cm, model, source)
    missing, unexpected = model.load_state_dict(state, strict=False)
    shared_keys = {f"{n}.weight" for name, code in cm.layers.items() for n in (name, *code.tied)}
    if unexpected or set(missing) != (set() if materialize else shared_keys):
        raise FormatError(
            f"{source}: tensors do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if not materialize:
        modules = dict(model.named_modules())
        for name, code in cm.layers.items():
            tied = [modules[t] for t in code.tied]
            grids = (code.grid, code.bias_grid)
            share_(modules[name], code.centers, code.assignments, code.sparsity_p, tied, code.bits, grids)
    return model


def load(
    path: str | Path, model: nn.Module | None = None, materialize: bool = True, max_weights: int | None = None
) -> nn.Module:
    """Rebuild a runnable model from a compressed file; ``model`` (a fresh instance) supplies the architecture
    when the file does not name a built-in one. ``materialize=False`` keeps shared layers compact.
    ``max_weights`` raises the bound on what the shared layers may expand to (default: see the file format)."""
    return rebuild(load_compressed(path, max_weights), model, materialize, str(path))


def is_compressed_file(path: str | Path) -> bool:
    """True when ``path`` starts with the compressed-file magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


@dataclass
class LoadedModel:
    """A model read from a compressed file or a checkpoint, with the architecture and dataset it names."""

    model: nn.Module
    name: str | None
    dataset: str | None
    compressed: bool
    file_bytes: int
    meta: dict[str, Any]


def load_model_file(path: str | Path, materialize: bool = False) -> LoadedModel:
    """Load a compressed file (shared layers compact unless ``materialize``) or a training checkpoint."""
    path = Path(path)
    if not path.exists():
        raise DeepKMeansError(f"{path}: no such file")
    if path.is_dir():
        raise DeepKMeansError(f"{path}: is a directory, not a model file")
    size = path.stat().st_size
    if is_compressed_file(path):
        cm = load_compressed(path)
        model = rebuild(cm, None, materialize, str(path))
        return LoadedModel(model, cm.model.get("name"), cm.model.get("dataset"), True, size, dict(cm.model))
    state = load_checkpoint(path)
    meta = dict(state.get("meta", {}))
    name = meta.get("name", meta.get("model"))  # "model": the key of checkpoints written before 0.1.0
    if not isinstance(name, str):
        raise DeepKMeansError(
            f"{path}: checkpoint does not name its model architecture (write it with meta={{'name': ARCH}}, "
            "ARCH one of the built-in models, or load it in Python with model=)"
        )
    model = build_model(name)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise FormatError(f"{path}: tensors do not fit the model {name} ({str(exc).splitlines()[0][:200]})") from None
    return LoadedModel(model, name, meta.get("dataset"), False, size, meta)
