"""Read the energy model's layer shapes off a torch model with one forward pass.

Forward hooks on ``nn.Conv2d`` and ``nn.Linear`` record each layer's ifmap size; a Linear is the FC
layer ``C = in_features, M = out_features, H = W = R = 1`` (for one that follows the flatten of a
conv ofmap, the flattened size stays ``C``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepkmeans.energy.layer import Layer, Sharing
from deepkmeans.energy.rs import EnergyResult, estimate


def _square(value: int | tuple[int, ...], what: str, name: str) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise ValueError(f"layer {name!r}: non-square {what} {values} is not modeled")
    return int(values[0])


def _sharing(name: str, module: nn.Module, info: tuple[np.ndarray, int, float] | None) -> Sharing | None:
    """Sharing of ``module`` from (assignments, K, entropy bits per row); d follows from the row count."""
    if info is None:
        return None
    assignments, K, bits = info
    a = np.asarray(assignments.cpu() if isinstance(assignments, torch.Tensor) else assignments).reshape(-1)
    numel = module.weight.numel()
    if a.size == 0 or numel % a.size != 0:
        raise ValueError(f"layer {name!r}: {a.size} assignments do not split {numel} weights into rows")
    return Sharing(K=int(K), d=numel // a.size, assignments=a, index_bits_per_row=float(bits))


def layers_from_model(
    model: nn.Module,
    input_shape: tuple,
    batch: int = 1,
    shared: dict[str, tuple[np.ndarray, int, float]] | None = None,
) -> list[Layer]:
    """Conv and Linear layers of ``model`` in call order, for a batch of ``batch`` inputs.

    ``input_shape`` is one sample's shape without the batch dimension, e.g. ``(1, 28, 28)``.
    ``shared`` maps a module name to (assignments, K, entropy bits per row) of its weight rows.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    shared = dict(shared or {})
    names = {module: name for name, module in model.named_modules()}
    unknown = set(shared) - {n for m, n in names.items() if isinstance(m, nn.Conv2d | nn.Linear)}
    if unknown:
        raise ValueError(f"shared names no Conv2d/Linear module of the model: {sorted(unknown)}")

    layers: list[Layer] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        name = names[module]
        x = inputs[0]
        info = shared.get(name)
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or _square(module.dilation, "dilation", name) != 1:
                raise ValueError(f"layer {name!r}: grouped or dilated convolutions are not modeled")
            if isinstance(module.padding, str):
                raise ValueError(f"layer {name!r}: string padding {module.padding!r} is not modeled")
            layers.append(
                Layer(
                    name=name,
                    M=module.out_channels,
                    C=module.in_channels,
                    H=int(x.shape[-2]),
                    W=int(x.shape[-1]),
                    R=_square(module.kernel_size, "kernel", name),
                    U=_square(module.stride, "stride", name),
                    P=_square(module.padding, "padding", name),
                    N=batch,
                    sharing=_sharing(name, module, info),
                )
            )
        else:
            layers.append(
                Layer(
                    name=name,
                    M=module.out_features,
                    C=module.in_features,
                    H=1,
                    R=1,
                    N=batch,
                    sharing=_sharing(name, module, info),
                )
            )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros((1, *input_shape)) if param is None else param.new_zeros((1, *input_shape))
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return layers


def estimate_energy(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1) -> EnergyResult:
    """Row-stationary energy of ``model``, dense vs weight-shared, from its shared layers' real assignments.

    Index bits per row are the real rANS stream sizes, so the estimate prices what the file stores. The model
    stays on its device and in its mode.
    """
    from deepkmeans.errors import DeepKMeansError
    from deepkmeans.shared import shared_layers

    shared = {}
    for layer in shared_layers(model).values():
        words, _ = layer.param.stream()
        info = (layer.assignments.cpu().numpy(), layer.param.K, words.size * 32 / layer.assignments.numel())
        shared.update({name: info for name in (layer.name, *layer.tied)})
    modeled = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    try:
        return estimate(layers_from_model(model, input_shape, batch, {k: v for k, v in shared.items() if k in modeled}))
    except ValueError as exc:
        raise DeepKMeansError(f"energy model: {exc}") from None
