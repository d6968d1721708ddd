"""BatchNorm re-estimation after compression: sharing the weights shifts every later layer's activations, so the
running statistics the dense model learned no longer match them. A few forward passes over training batches,
without gradients, measure them again; no weight changes (Li et al. 2016, "Revisiting Batch Normalization for
Practical Domain Adaptation"; the ``update_bn`` of stochastic weight averaging)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from deepkmeans.errors import ConfigError, DeepKMeansError


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def _statistics(layers: list[nn.modules.batchnorm._BatchNorm]) -> list[dict[str, torch.Tensor]]:
    return [{k: b.clone() for k, b in bn.named_buffers(recurse=False) if b is not None} for bn in layers]


@torch.no_grad()
def reestimate_batchnorm_(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str | None = None,
    max_batches: int = 50,
) -> int:
    """Replace each BatchNorm layer's running mean and variance by their average over the first ``max_batches``
    of ``batches`` (the cumulative average: every batch counts the same); returns how many layers were
    re-estimated. Only the BatchNorm layers run in train mode (dropout stays off, as at inference); the
    model's weights, modes, momenta and device are left as they were. ``device``: where to run (default:
    where the model is)."""
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ConfigError(f"max_batches must be an integer >= 1, got {max_batches!r}")
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    param = next(model.parameters(), None)
    home = param.device if param is not None else torch.device("cpu")
    device = home if device is None else torch.device(device)
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in layers]
    saved = _statistics(layers)
    done = False
    try:
        model.to(device).eval()
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        seen = 0
        for x, _ in batches:
            if seen >= max_batches:
                break
            model(x.to(device, non_blocking=True))
            seen += 1
        if seen == 0:
            raise DeepKMeansError("no batches to re-estimate BatchNorm statistics on (the batches given are empty)")
        done = True
    finally:
        for bn, momentum, stats in zip(layers, momenta, saved, strict=True):
            bn.momentum = momentum
            if not done:
                for name, value in stats.items():
                    getattr(bn, name).copy_(value)
        for m, training in modes.items():
            m.train(training)
        model.to(home)
    return len(layers)
