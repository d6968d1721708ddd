"""Deep k-Means re-training state: F per layer, refreshed every T steps, and the penalty (lam/2) sum_l R(W_l, F_l).

Works on weight tensors and their resolved specs only (the layer plan decides which); the lifecycle object
:class:`deepkmeans.DeepKMeans` owns one of these.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist

from deepkmeans.cluster.quantize import cluster_rows, refine_rows, sparse_count
from deepkmeans.cluster.rows import to_rows
from deepkmeans.config import RegularizerConfig
from deepkmeans.errors import PlanWarning
from deepkmeans.plan import ResolvedSpec
from deepkmeans.regularize.penalty import (
    Partition,
    add_kmeans_gradient_,
    kmeans_penalty,
    spectral_basis,
    spectral_penalty,
    spectral_residual,
)


class PenaltyState:
    """F of each layer and the penalty it defines.

    ``method='kmeans'``: F is the exact indicator of a k-means run that honours sparsity p, seeded as the
    compression step is, so re-training pulls rows towards the clustering compression will use; later
    refreshes continue Lloyd from the previous F (warm start). ``method='spectral'``: the paper's relaxation,
    identically zero when K >= d (rank(W) <= d), which is reported once per layer. ``initial``: the first F of
    some layers, computed by the caller (the lifecycle passes its compression clustering, the same k-means).
    """

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        specs: dict[str, ResolvedSpec],
        seeds: dict[str, int],
        config: RegularizerConfig,
        initial: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if config.method == "none":
            raise ValueError("PenaltyState needs a method other than 'none'")
        self.config = config
        self.weights, self.specs, self.seeds = weights, specs, seeds
        self.inactive: list[str] = []
        if config.method == "spectral":
            self.inactive = [name for name, spec in specs.items() if spec.K >= spec.d]
            for name in self.inactive:
                spec = specs[name]
                warnings.warn(
                    f"layer {name}: spectral penalty is identically zero for K={spec.K} >= d={spec.d}"
                    " (rank(W) <= d); use method 'kmeans' for harder assignments",
                    PlanWarning,
                    stacklevel=3,
                )
        self.state: dict[str, torch.Tensor] = {}
        self.partitions: dict[str, Partition] = {}
        self.steps = 0
        self._initial = dict(initial or {})  # first F per layer, already computed by the caller (same k-means)
        self.refresh()
        self._hooks = []
        if config.apply == "gradient":
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError("apply='gradient' runs in one process only; use apply='loss' under DDP")
            self._hooks = [
                weights[name].register_post_accumulate_grad_hook(self._gradient_hook(name)) for name in self.state
            ]

    def ramp_at(self, steps: int) -> float:
        """How far the ramp has come after ``steps``: lam and p are this fraction of their values."""
        return min(1.0, steps / self.config.ramp_steps) if self.config.ramp_steps else 1.0

    @property
    def ramp(self) -> float:
        return self.ramp_at(self.steps)

    def _assignments(self, name: str, rows: torch.Tensor, spec: ResolvedSpec) -> torch.Tensor:
        """k-means assignments of one layer: warm-started from the last refresh's F, unless the ramp of p has
        just made (or unmade) the dominant cluster since then, which needs k-means++ again."""
        p = spec.p * self.ramp

        def split(sparsity_p: float) -> bool:
            return spec.K > 1 and sparse_count(rows.shape[0], sparsity_p) > 0

        before = spec.p * self.ramp_at(max(self.steps - self.config.refresh_every, 0))
        previous = self.state.get(name)
        if previous is None or split(p) != split(before):
            return cluster_rows(rows, spec.K, p, seed=self.seeds[name], beta=spec.beta, fast=spec.fast).assignments
        return refine_rows(rows, previous, spec.K, p, beta=spec.beta).assignments

    def refresh(self) -> None:
        """Recompute F (spectral basis or k-means assignments) from the current weights."""
        for name, spec in self.specs.items():
            if name in self.inactive:
                continue
            rows = to_rows(self.weights[name].detach(), spec.d)
            if self.config.method == "spectral":
                value = spectral_basis(rows, spec.K)
            elif name in self._initial:
                value = self._initial.pop(name)
            else:
                value = self._assignments(name, rows, spec)
            if dist.is_available() and dist.is_initialized():
                # Rank 0's F is the one every rank uses, so all replicas optimise the same objective.
                value = value.contiguous()
                dist.broadcast(value, src=0)
            self._set(name, value)

    def _set(self, name: str, value: torch.Tensor) -> None:
        if self.config.method == "kmeans":
            value = value.to(torch.int32)  # assignments: half the memory of int64 on large layers
            self.partitions[name] = Partition.of(value, self.specs[name].K)
        self.state[name] = value

    def layer_penalties(self) -> dict[str, torch.Tensor]:
        """R(W_l, F_l) for each active layer (without the lam/2 factor)."""
        out = {}
        for name, value in self.state.items():
            rows = to_rows(self.weights[name], self.specs[name].d)
            if self.config.method == "spectral":
                out[name] = spectral_penalty(rows, value)
            else:
                out[name] = kmeans_penalty(rows, value, self.specs[name].K, self.partitions[name])
        return out

    @property
    def lam(self) -> float:
        """The penalty weight now (lam, ramped)."""
        return self.config.lam * self.ramp

    def _gradient_hook(self, name: str):
        d = self.specs[name].d

        def hook(weight: torch.Tensor) -> None:
            lam = self.lam
            with torch.no_grad():
                rows, grad_rows = to_rows(weight.detach(), d), to_rows(weight.grad, d)
                if self.config.method == "spectral":
                    grad_rows.add_(spectral_residual(rows, self.state[name]), alpha=lam)
                else:
                    add_kmeans_gradient_(grad_rows, rows, self.partitions[name], lam)

        return hook

    def penalty(self) -> torch.Tensor | None:
        """(lam / 2) * sum_l R(W_l, F_l) for the current weights: differentiable (apply 'loss'), or detached
        (apply 'gradient', whose gradient the hooks add at backward); ``None`` when no layer is active."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._hooks):
            terms = list(self.layer_penalties().values())
        if not terms:
            return None
        return 0.5 * self.lam * torch.stack(terms).sum()

    def close(self) -> None:
        """Remove the gradient hooks (apply 'gradient')."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

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
