"""The one object that takes a model through Deep k-Means: plan, re-train with the penalty, report, finalize.

    dkm = DeepKMeans(model, CompressConfig(...), RegularizerConfig(method="kmeans", lam=1.0))
    for x, y in batches:                        # the user's own training loop
        loss = criterion(model(x), y) + dkm.penalty()
        opt.zero_grad(); loss.backward(); opt.step(); dkm.step()
    for layer in dkm.report(): print(layer.name, layer.hardness)
    compressed = dkm.finalize()                 # a weight-shared copy (inplace=True: the model itself)

One layer plan and one seed serve the penalty's clustering, the report and the final compression, so
re-training pulls each layer's rows towards exactly the clustering the file will store.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from deepkmeans.accounting import LayerAccount, other_bits, shared_account
from deepkmeans.cluster import narrow
from deepkmeans.cluster.quantize import RowClustering, cluster_rows, hardness
from deepkmeans.cluster.rows import from_rows, to_rows
from deepkmeans.config import CompressConfig, RegularizerConfig, from_dict
from deepkmeans.errors import ConfigError, DeepKMeansError, PlanWarning
from deepkmeans.plan import LayerPlan, build_plan
from deepkmeans.regularize.regularizer import PenaltyState
from deepkmeans.shared import copy_module, share_


@dataclass(frozen=True)
class LayerReport:
    """Where one shared layer stands now: its accounting if compressed now, and its hardness
    ``||W - Q(W)|| / ||W||`` (Q: the compression step; lower means harder assignments)."""

    account: LayerAccount
    hardness: float

    @property
    def name(self) -> str:
        return self.account.name


def _as_config(cls: type, value: Any, what: str) -> Any:
    """``value`` as config dataclass ``cls``: itself, or a mapping validated as a YAML section would be
    (``{"layers": {"conv*": {"K": 16}}}``); anything else is refused in one line."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, dict(value), what)
    raise ConfigError(f"{what}: expected a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


class DeepKMeans:
    """Deep k-Means on one model: ``penalty()`` / ``step()`` while re-training, ``report()``, ``finalize()``.

    ``regularizer=None`` (or method 'none') makes ``penalty()`` a zero tensor: compression alone.
    Either config may be given as a mapping of its fields, validated like a YAML section.
    The layer plan is resolved once, here; layers the config asks for but that cannot be shared are
    left dense with a warning saying why.
    """

    def __init__(
        self,
        model: nn.Module,
        config: CompressConfig | Mapping[str, Any],
        regularizer: RegularizerConfig | Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.config = _as_config(CompressConfig, config, "config")
        regularizer = {"method": "none"} if regularizer is None else regularizer
        self.regularizer = _as_config(RegularizerConfig, regularizer, "regularizer")
        self.plan: LayerPlan = build_plan(model, self.config)
        for note in self.plan.notes:
            warnings.warn(note, PlanWarning, stacklevel=2)
        self._modules = dict(model.named_modules())
        self._check_widths()
        shared = self.plan.shared
        self._clusterings: dict[str, tuple[tuple, RowClustering]] = {}
        self._finalized = False
        self._penalty: PenaltyState | None = None
        if self.regularizer.method != "none" and shared:
            weights = {name: self._modules[name].weight for name in shared}
            initial = None
            if self.regularizer.method == "kmeans" and self.regularizer.ramp_steps == 0:
                # F's first k-means is the compression step's clustering of these weights: run it once, for both
                initial = {name: self.clustering(name).assignments.to(w.device) for name, w in weights.items()}
            self._penalty = PenaltyState(
                weights,
                {name: pl.spec for name, pl in shared.items()},
                {name: pl.seed for name, pl in shared.items()},
                self.regularizer,
                initial=initial,
            )

    def _check_widths(self) -> None:
        """Refuse a layer whose weight or bias its 16-bit storage cannot hold (a center is a mean of rows, so
        none exceeds the weight's largest magnitude): float16 would store it as infinite."""
        for name, pl in self.plan.shared.items():
            module = self._modules[name]
            bias = getattr(module, "bias", None)
            for what, values in (("weight", module.weight), ("bias", bias)):
                top = narrow.overflows(values, pl.spec.bits) if isinstance(values, torch.Tensor) else None
                if top is not None:
                    half = narrow.half_type(values.dtype)
                    raise ConfigError(
                        f"compress.layers: {name} at bits 16 is stored as {str(half).removeprefix('torch.')}, whose"
                        f" largest value is {torch.finfo(half).max:g}, but its {what} reaches |{top:g}|;"
                        " use bits 32 or 8 for it"
                    )

    def _check_open(self) -> None:
        if self._finalized:
            raise DeepKMeansError("this DeepKMeans was finalized in place; create a new one to continue")

    def penalty(self) -> torch.Tensor:
        """(lam/2) * sum_l R(W_l, F_l) over the shared layers; add it to the loss before ``backward()``."""
        self._check_open()
        value = self._penalty.penalty() if self._penalty is not None else None
        if value is not None:
            return value
        param = next(self.model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)

    def step(self) -> None:
        """Call after each optimizer step: counts steps and refreshes F every ``refresh_every`` of them."""
        self._check_open()
        if self._penalty is not None:
            self._penalty.step()

    @property
    def active(self) -> bool:
        """True when ``penalty()`` can be non-zero (a method other than 'none' and at least one layer)."""
        return self._penalty is not None

    @property
    def in_loss(self) -> bool:
        """True when ``penalty()`` must be added to the loss (apply 'loss'); with apply 'gradient' the gradient
        reaches the weights by itself at ``backward()``."""
        return self.regularizer.apply == "loss"

    @property
    def steps(self) -> int:
        return self._penalty.steps if self._penalty is not None else 0

    @property
    def assignments(self) -> dict[str, torch.Tensor]:
        """The penalty's current F per layer (k-means assignments, or the spectral basis)."""
        return dict(self._penalty.state) if self._penalty is not None else {}

    def layer_penalties(self) -> dict[str, torch.Tensor]:
        """R(W_l, F_l) per active layer (without lam/2)."""
        return self._penalty.layer_penalties() if self._penalty is not None else {}

    def clustering(self, name: str, importance: torch.Tensor | None = None) -> RowClustering:
        """The compression step's clustering of one shared layer's current weight, computed on the CPU (the file
        does not depend on the device the model trains on) and cached per weight version: the report, the
        penalty's first F and ``finalize`` of the same weights share one k-means. ``importance`` (one value
        per weight, e.g. squared gradients) weights each weight's error."""
        weight = self._modules[name].weight
        spec = self.plan.shared[name].spec
        key = (weight.data_ptr(), weight._version, None if importance is None else id(importance))
        cached = self._clusterings.get(name)
        if cached is None or cached[0] != key:
            rows = to_rows(weight.detach().to("cpu", torch.float32), spec.d)
            weights = None if importance is None else to_rows(importance.to("cpu", torch.float32), spec.d)
            seed = self.plan.shared[name].seed
            clustering = cluster_rows(
                rows, spec.K, spec.p, seed=seed, beta=spec.beta, importance=weights, fast=spec.fast
            )
            cached = (key, clustering)
            self._clusterings[name] = cached
        return cached[1]

    def report(self) -> list[LayerReport]:
        """Per shared layer: N, d, K, p, entropy H, paper bits before/after, and hardness, if compressed now."""
        self._check_open()
        out = []
        for name, pl in self.plan.shared.items():
            module = self._modules[name]
            weight = module.weight.detach()
            clustering = self.clustering(name)
            quantized = from_rows(clustering.reconstruct(), pl.shape).to(weight)
            params = [p for p in module.parameters(recurse=False) if p is not module.weight]
            dense, stored = other_bits(module, params, pl.spec.bits)
            note = f"tied with {', '.join(pl.tied)}" if pl.tied else ""
            account = shared_account(
                name,
                pl.module_type,
                pl.shape,
                clustering.centers.to(weight.dtype),
                clustering.assignments,
                pl.spec.p,
                dense,
                note=note,
                bits=pl.spec.bits,
                other_bits_after=stored,
            )
            out.append(LayerReport(account, hardness(weight, quantized)))
        return out

    def finalize(
        self,
        inplace: bool = False,
        progress: bool | None = None,
        importance: dict[str, torch.Tensor] | None = None,
    ) -> nn.Module:
        """The compressed model: each shared layer holds its K centers and one index per row (see
        :mod:`deepkmeans.shared`). A copy unless ``inplace``; :func:`deepkmeans.materialize` makes it dense.
        ``progress``: a bar over the layers (default: when stderr is a terminal). ``importance``: per layer, a
        tensor of the weight's shape weighting each weight's error in the clustering (data-aware k-means, e.g.
        :func:`deepkmeans.importance.squared_gradients`); layers it does not name are clustered plainly."""
        self._check_open()
        self._check_widths()  # the weights may have grown since the plan (re-training)
        importance = importance or {}
        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(self.plan.shared, desc="k-means", unit="layer", leave=False, disable=not show)
        clusterings = {}
        for name in bar:
            bar.set_postfix_str(name)
            clusterings[name] = self.clustering(name, importance.get(name))
        self._warn_collapsed(clusterings)
        model = self.model if inplace else copy_module(self.model)
        modules = dict(model.named_modules())
        for name, pl in self.plan.shared.items():
            c = clusterings[name]
            tied = [modules[t] for t in pl.tied]
            share_(modules[name], c.centers, c.assignments, pl.spec.p, tied, pl.spec.bits)
        if inplace:
            self._finalized = True
            if self._penalty is not None:
                self._penalty.close()
        return model

    def _warn_collapsed(self, clusterings: dict[str, RowClustering]) -> None:
        """Say which layers a rate-aware beta left with fewer than half their K centers holding any row: the
        index bits it saves there are paid for in accuracy, and a layer of one or two centers rarely keeps it."""
        for name, c in clusterings.items():
            spec = self.plan.shared[name].spec
            used = int(torch.bincount(c.assignments.long().flatten(), minlength=spec.K).count_nonzero())
            if spec.beta > 0 and 2 * used < spec.K:
                warnings.warn(
                    f"{name}: beta {spec.beta:g} uses {used} of {spec.K} centers (a smaller beta keeps more)",
                    PlanWarning,
                    stacklevel=3,
                )

    def state_dict(self) -> dict[str, Any]:
        """What resuming re-training needs: the penalty's step count and F per layer."""
        return {"penalty": self._penalty.state_dict() if self._penalty is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("penalty")
        if (saved is None) != (self._penalty is None):
            raise DeepKMeansError("saved Deep k-Means state does not match this regularizer (method changed?)")
        if self._penalty is not None:
            try:
                self._penalty.load_state_dict(saved)
            except ValueError as exc:
                raise DeepKMeansError(f"cannot resume Deep k-Means: {exc}") from None


def compress(
    model: nn.Module,
    config: CompressConfig | Mapping[str, Any],
    inplace: bool = False,
    importance: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Share the configured layers' weights: a compressed copy of ``model`` (or ``model`` itself if ``inplace``);
    ``importance`` as in :meth:`DeepKMeans.finalize`."""
    return DeepKMeans(model, config).finalize(inplace=inplace, importance=importance)
