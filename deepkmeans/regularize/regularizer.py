"""Deep k-Means re-training: add (lam/2) * sum_l R(W_l, F_l) to the loss, refreshing F every T steps."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from deepkmeans.cluster.quantize import cluster_rows, refine_rows
from deepkmeans.cluster.rows import to_rows
from deepkmeans.compress import ResolvedSpec, layer_seed, resolve_specs, shareable_layers
from deepkmeans.config import LayerSpec
from deepkmeans.regularize.penalty import Partition, kmeans_penalty, spectral_basis, spectral_penalty

METHODS = ("spectral", "kmeans")


class KMeansRegularizer:
    """Callable penalty for any model: ``loss + reg.penalty()``, then ``reg.step()`` after each update.

    ``method='kmeans'`` uses the exact indicator F from a k-means run that honours sparsity p, so
    re-training pulls rows towards the very clustering compression will use. The first F comes from
    a full k-means++ run; later refreshes continue Lloyd from the previous F (warm start). ``method='spectral'``
    is the paper's relaxation; it is identically zero when K >= d (rank(W) <= d), which is detected
    and reported once per layer.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, LayerSpec],
        method: str = "kmeans",
        lam: float = 1e-3,
        refresh_every: int = 100,
        seed: int = 0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.lam = lam
        self.refresh_every = refresh_every
        self.seed = seed
        modules = shareable_layers(model)
        self.specs: dict[str, ResolvedSpec] = {
            name: spec
            for name, spec in resolve_specs(model, layers).items()
            if spec.k < modules[name].weight.numel() // spec.d
        }
        self.weights = {name: modules[name].weight for name in self.specs}
        self.inactive: list[str] = []
        if method == "spectral":
            for name, spec in self.specs.items():
                if spec.k >= spec.d:
                    self.inactive.append(name)
                    warnings.warn(
                        f"layer {name}: spectral penalty is identically zero for K={spec.k} >= d={spec.d}"
                        " (rank(W) <= d); use method 'kmeans' for harder assignments",
                        stacklevel=2,
                    )
        self.state: dict[str, torch.Tensor] = {}
        self.partitions: dict[str, Partition] = {}
        self.steps = 0
        self.refresh()

    def refresh(self) -> None:
        """Recompute F (spectral basis or k-means assignments) from the current weights."""
        for name, spec in self.specs.items():
            if name in self.inactive:
                continue
            rows = to_rows(self.weights[name].detach(), spec.d)
            if self.method == "spectral":
                value = spectral_basis(rows, spec.k)
            elif name in self.state:
                value = refine_rows(rows, self.state[name], spec.k, spec.sparsity_p).assignments
            else:
                value = cluster_rows(rows, spec.k, spec.sparsity_p, seed=layer_seed(self.seed, name)).assignments
            if dist.is_available() and dist.is_initialized():
                # Rank 0's F is the one every rank uses, so all replicas optimise the same objective.
                value = value.contiguous()
                dist.broadcast(value, src=0)
            self.state[name] = value
            if self.method == "kmeans":
                self.partitions[name] = Partition.of(value, spec.k)

    def layer_penalties(self) -> dict[str, torch.Tensor]:
        """R(W_l, F_l) for each active layer (without the lam/2 factor)."""
        out = {}
        for name, value in self.state.items():
            rows = to_rows(self.weights[name], self.specs[name].d)
            if self.method == "spectral":
                out[name] = spectral_penalty(rows, value)
            else:
                out[name] = kmeans_penalty(rows, value, self.specs[name].k, self.partitions[name])
        return out

    def penalty(self) -> torch.Tensor:
        """(lam / 2) * sum_l R(W_l, F_l), differentiable w.r.t. the weights."""
        terms = list(self.layer_penalties().values())
        if not terms:
            return torch.zeros(())
        return 0.5 * self.lam * torch.stack(terms).sum()

    def step(self) -> None:
        """Count one optimizer step; refresh F every ``refresh_every`` steps."""
        self.steps += 1
        if self.steps % self.refresh_every == 0:
            self.refresh()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": {k: v.detach().cpu() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for name, value in state["state"].items():
            if name in self.state:
                self.state[name] = value.to(self.state[name].device)
                if self.method == "kmeans":
                    self.partitions[name] = Partition.of(self.state[name], self.specs[name].k)
