"""Deep k-Means re-training state: F per layer, refreshed every T steps, and the penalty (lam/2) sum_l R(W_l, F_l).

Works on weight tensors and their resolved specs only (the layer plan decides which); the lifecycle object
:class:`deepkmeans.DeepKMeans` owns one of these.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist

from deepkmeans.cluster.quantize import cluster_rows, refine_rows
from deepkmeans.cluster.rows import to_rows
from deepkmeans.config import RegularizerConfig
from deepkmeans.plan import ResolvedSpec
from deepkmeans.regularize.penalty import Partition, kmeans_penalty, spectral_basis, spectral_penalty


class PenaltyState:
    """F of each layer and the penalty it defines.

    ``method='kmeans'``: F is the exact indicator of a k-means run that honours sparsity p, seeded as the
    compression step is, so re-training pulls rows towards the clustering compression will use; later
    refreshes continue Lloyd from the previous F (warm start). ``method='spectral'``: the paper's relaxation,
    identically zero when K >= d (rank(W) <= d), which is reported once per layer.
    """

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        specs: dict[str, ResolvedSpec],
        seeds: dict[str, int],
        config: RegularizerConfig,
    ) -> None:
        if config.method == "none":
            raise ValueError("PenaltyState needs a method other than 'none'")
        self.config = config
        self.weights, self.specs, self.seeds = weights, specs, seeds
        self.inactive: list[str] = []
        if config.method == "spectral":
            self.inactive = [name for name, spec in specs.items() if spec.k >= spec.d]
            for name in self.inactive:
                spec = specs[name]
                warnings.warn(
                    f"layer {name}: spectral penalty is identically zero for K={spec.k} >= d={spec.d}"
                    " (rank(W) <= d); use method 'kmeans' for harder assignments",
                    stacklevel=3,
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
            if self.config.method == "spectral":
                value = spectral_basis(rows, spec.k)
            elif name in self.state:
                value = refine_rows(rows, self.state[name], spec.k, spec.sparsity_p).assignments
            else:
                value = cluster_rows(rows, spec.k, spec.sparsity_p, seed=self.seeds[name]).assignments
            if dist.is_available() and dist.is_initialized():
                # Rank 0's F is the one every rank uses, so all replicas optimise the same objective.
                value = value.contiguous()
                dist.broadcast(value, src=0)
            self._set(name, value)

    def _set(self, name: str, value: torch.Tensor) -> None:
        self.state[name] = value
        if self.config.method == "kmeans":
            self.partitions[name] = Partition.of(value, self.specs[name].k)

    def layer_penalties(self) -> dict[str, torch.Tensor]:
        """R(W_l, F_l) for each active layer (without the lam/2 factor)."""
        out = {}
        for name, value in self.state.items():
            rows = to_rows(self.weights[name], self.specs[name].d)
            if self.config.method == "spectral":
                out[name] = spectral_penalty(rows, value)
            else:
                out[name] = kmeans_penalty(rows, value, self.specs[name].k, self.partitions[name])
        return out

    def penalty(self) -> torch.Tensor | None:
        """(lam / 2) * sum_l R(W_l, F_l), differentiable w.r.t. the weights; ``None`` when no layer is active."""
        terms = list(self.layer_penalties().values())
        if not terms:
            return None
        return 0.5 * self.config.lam * torch.stack(terms).sum()

    def step(self) -> None:
        """Count one optimizer step; refresh F every ``refresh_every`` steps."""
        self.steps += 1
        if self.steps % self.config.refresh_every == 0:
            self.refresh()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": {k: v.detach().cpu() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step count and every saved F; a saved F for a layer this state does not hold is an error."""
        unknown = set(state["state"]) - set(self.state)
        if unknown:
            raise ValueError(f"saved penalty state names layers this one does not hold: {sorted(unknown)}")
        self.steps = int(state["steps"])
        for name, value in state["state"].items():
            self._set(name, value.to(self.state[name].device))
