"""Data-aware k-means: how much each weight matters, measured on training images.

The importance of a weight is its squared gradient of the task loss summed over small groups of training
images, a diagonal empirical Fisher estimate (the sensitivity coremltools' SKM palettization and GPTVQ weight
their clustering by). Weighting each weight's squared error by it makes post-training k-means spend its
centers where the loss is sensitive, for users who cannot re-train.
"""

from __future__ import annotations

import torch
from torch import nn

from deepkmeans.data import Batches

GROUP = 8  # images per gradient: squared per-group gradients approximate the per-image Fisher


def squared_gradients(
    model: nn.Module, batches: Batches, device: torch.device, names: list[str], max_batches: int
) -> dict[str, torch.Tensor]:
    """Per named module, the sum over groups of ``GROUP`` images (from the first ``max_batches`` batches) of the
    squared gradient of the cross-entropy with respect to its weight. The model is evaluated in eval mode
    (BatchNorm statistics untouched) and left as it was: mode, gradients and parameters."""
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in names}
    total = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    was_training = model.training
    saved = {name: w.grad for name, w in weights.items()}
    flags = {name: w.requires_grad for name, w in weights.items()}
    model.eval()
    try:
        for w in weights.values():
            w.requires_grad_(True)
        for i, (x, y) in enumerate(batches):
            if i >= max_batches:
                break
            for xs, ys in zip(x.split(GROUP), y.split(GROUP), strict=True):
                logits = model(xs.to(device))
                loss = nn.functional.cross_entropy(logits, ys.to(device), reduction="sum")
                grads = torch.autograd.grad(loss, list(weights.values()))
                for name, grad in zip(weights, grads, strict=True):
                    total[name] += grad.detach().to(torch.float32) ** 2
    finally:
        model.train(was_training)
        for name, w in weights.items():
            w.requires_grad_(flags[name])
            w.grad = saved[name]
    return total
