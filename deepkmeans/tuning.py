"""Per-layer K / p / d chosen for a size target, on validation data.

1. Sensitivity: each candidate (K, p, d) of each layer is measured by compressing that layer alone and
   evaluating the model on the validation batches (loss and accuracy); its cost is its exact bits under
   the paper accounting (K*d*b + N*H from the real assignments + the layer's other parameters).
2. Allocation: one candidate per layer (or dense) minimizing the summed loss increase under a bit budget,
   by Lagrangian relaxation: for a price per bit, every layer takes its cheapest candidate in loss + price
   * bits; the price is bisected until the budget holds.
3. Check: all chosen layers compressed together, measured on the same validation batches. With a maximum
   accuracy drop instead of a size target, the largest size target whose joint check stays within the drop
   is searched.
The test set is never touched: the caller passes validation batches (the last training examples, held out).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from deepkmeans.accounting import account, other_bits, value_bits
from deepkmeans.cluster.narrow import stored_bits
from deepkmeans.cluster.quantize import sparse_count
from deepkmeans.cluster.rows import default_row_length, num_rows
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.data import Batches
from deepkmeans.errors import ConfigError, DeepKMeansError, PlanWarning
from deepkmeans.lifecycle import compress
from deepkmeans.measure import model_device
from deepkmeans.plan import PlannedLayer, build_plan
from deepkmeans.train import evaluate

KS = (4, 8, 16, 32, 64, 128)
PS = (0.0, 0.5, 0.8, 0.9, 0.95)
LINEAR_DS = (1, 2, 5, 10, 20)
WIDTHS = (32, 8)  # bits of stored centers and bias (16 on request: on the models measured it loses as little as 8)
BETAS = (0.0,)  # rate-aware assignment (on request: each beta multiplies the candidates measured)
SENSITIVITY_IMAGES = 1000  # validation examples each single-layer candidate is measured on (the joint check: all)
GRID_STEPS = 12  # compression ratios tried (geometric up to the target) when searching a maximum accuracy drop


@dataclass(frozen=True)
class Candidate:
    """One layer compressed alone with ``spec``: its exact paper bits and the validation loss and accuracy."""

    layer: str
    spec: LayerSpec | None  # None: the layer left dense
    bits: float
    val_loss: float
    val_acc: float


@dataclass(frozen=True)
class TuneResult:
    """The chosen per-layer specs, the candidates they came from, and the joint check on validation data."""

    config: CompressConfig
    candidates: dict[str, list[Candidate]]
    chosen: dict[str, Candidate]
    dense_val_loss: float
    dense_val_acc: float
    val_loss: float
    val_acc: float
    paper_cr: float
    target_cr: float
    seconds: float


def linear_row_lengths(width: int) -> list[int]:
    """Row lengths tried for a linear layer of ``width`` inputs: for each of ``LINEAR_DS`` the divisor of the
    width nearest to it (the smaller on a tie), so a width such as 784 still gets five lengths (1, 2, 4, 8, 16)."""
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    nearest = (min(divisors, key=lambda d: (abs(d - target), d)) for target in LINEAR_DS)
    return list(dict.fromkeys(nearest))


@dataclass(frozen=True)
class Grid:
    """The candidates tried per layer: centers ``ks``, sparsities ``ps`` and row lengths ``d``: None for the
    default of convolutions (the kernel width, the paper's rows; 1 for depthwise ones) and small divisors of
    the input width of linear layers (:func:`linear_row_lengths`), or one length for every layer (e.g. 1:
    scalar sharing); the storage ``widths`` of centers and bias, and the rate-aware assignment weights
    ``betas``."""

    ks: tuple[int, ...] = KS
    ps: tuple[float, ...] = PS
    d: int | None = None
    widths: tuple[int, ...] = WIDTHS
    betas: tuple[float, ...] = BETAS

    def row_lengths(self, shape: tuple[int, ...], groups: int = 1) -> list[int]:
        if self.d is not None:
            return [self.d] if shape[-1] % self.d == 0 else []
        if len(shape) >= 3:
            return [default_row_length(shape, groups)]
        return linear_row_lengths(shape[-1])

    def specs(self, shape: tuple[int, ...], groups: int = 1) -> Iterable[LayerSpec]:
        for d in self.row_lengths(shape, groups):
            for k in self.ks:
                if k < math.prod(shape) // d:
                    for p in self.ps:
                        for bits in self.widths:
                            for beta in self.betas:
                                yield LayerSpec(K=k, p=p, d=d, bits=bits, beta=beta)


def _fewest_bits(module: nn.Module, shape: tuple[int, ...], spec: LayerSpec) -> float:
    """The fewest paper bits ``spec`` can cost a layer, known before any clustering: its centers and its other
    parameters exactly, its indexes at the least entropy the sparsity p allows (the dominant cluster's share
    and every other row on one center; none under rate-aware assignment, which may move any row to it)."""
    weight = module.weight
    n = num_rows(shape, spec.d)
    q = sparse_count(n, spec.p) / n if spec.K > 1 and spec.beta == 0 else 0.0
    h = 0.0 if q in (0.0, 1.0) else -(q * math.log2(q) + (1 - q) * math.log2(1 - q))
    _, stored = other_bits(module, [p for p in module.parameters(recurse=False) if p is not weight], spec.bits)
    return stored_bits(spec.K * spec.d, spec.bits, value_bits(weight)) + n * h + stored


def reachable_cr(model: nn.Module, grid: Grid = Grid(), layers: list[str] | None = None) -> float:
    """The largest paper CR any choice of ``grid``'s candidates (or dense) for ``layers`` (default: as
    :func:`sensitivities`) can reach on ``model``: each layer at its fewest bits (:func:`_fewest_bits`), an
    upper bound computed from shapes alone, before any k-means or evaluation."""
    plan = build_plan(model, CompressConfig())
    layers = layers or _candidate_layers(plan.layers)
    total = account(model)
    dense = {la.name: la.bits_before for la in total.layers}
    modules = dict(model.named_modules())
    least = 0.0
    for pl in plan.layers:
        if pl.name in layers:
            fewest = (_fewest_bits(modules[pl.name], pl.shape, s) for s in grid.specs(pl.shape, pl.groups))
            least += min([dense[pl.name], *fewest])
    fixed = total.bits_before - sum(dense[name] for name in layers)
    return total.bits_before / (fixed + least)


def check_reachable(model: nn.Module, target_cr: float, grid: Grid = Grid()) -> None:
    """Refuse at once a target beyond :func:`reachable_cr`: no allocation of the candidates could meet it."""
    top = reachable_cr(model, grid)
    if target_cr > top:
        raise ConfigError(
            f"target compression ratio {target_cr:g}x: the candidates reach at most {top:.1f}x on this model"
            " (every layer at its fewest bits); lower the target or add smaller candidates (--widths 8)"
        )


def _candidate_layers(layers: Iterable[PlannedLayer]) -> list[str]:
    return [pl.name for pl in layers if pl.module_type != "Embedding"]


def sensitivities(
    model: nn.Module,
    val: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    layers: list[str] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    grid: Grid = Grid(),
) -> dict[str, list[Candidate]]:
    """Every grid candidate of every layer in ``layers`` (default: every shareable layer but embeddings), each
    compressed alone (the others dense) and measured on the first ``SENSITIVITY_IMAGES`` of ``val``, plus the
    layer left dense."""
    plan = build_plan(model, CompressConfig())
    layers = layers or _candidate_layers(plan.layers)
    jobs = [(pl.name, spec) for pl in plan.layers if pl.name in layers for spec in grid.specs(pl.shape, pl.groups)]
    device = device or model_device(model)
    val = _first_examples(val, SENSITIVITY_IMAGES)
    show = sys.stderr.isatty() if progress is None else progress
    loss, acc = evaluate(model, val, device)
    out = {name: [Candidate(name, None, _layer_bits(model, name), loss, acc)] for name in layers}
    for name, spec in tqdm(jobs, desc="tune: sensitivity", unit="candidate", disable=not show):
        with warnings.catch_warnings():  # a candidate is a trial: one a beta collapses is measured, not reported
            warnings.simplefilter("ignore", PlanWarning)
            shared = compress(model, CompressConfig(layers={name: spec}, seed=seed))
        row = next(la for la in account(shared).layers if la.name == name)
        loss, acc = evaluate(shared, val, device)
        out[name].append(Candidate(name, spec, row.bits_after, loss, acc))
    return out


def _first_examples(val: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int) -> Batches:
    """The first ``n`` examples of ``val`` (:class:`Batches`, a ``DataLoader`` or any iterable of ``(x, y)``
    batches) as unshuffled batches of the same size."""
    if isinstance(val, Batches):
        return Batches(val.x[:n], val.y[:n], val.batch_size, False)
    xs, ys, count = [], [], 0
    for x, y in val:
        xs.append(x)
        ys.append(y)
        count += len(y)
        if count >= n:
            break
    if not xs:
        raise ConfigError("tune: the validation data holds no batches")
    return Batches(torch.cat(xs)[:n], torch.cat(ys)[:n], len(ys[0]), False)


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats in both bits and validation loss, by increasing bits."""
    front: list[Candidate] = []
    for c in sorted(cands, key=lambda c: (c.bits, c.val_loss)):
        if not front or c.val_loss < front[-1].val_loss:
            front.append(c)
    return front


def sensitivity_table(result: TuneResult) -> str:
    """Markdown: per layer, the Pareto-optimal candidates (what the allocation chooses from), the choice marked."""
    lines = [
        "| layer | K | p | d | bits | beta | paper bits | val loss, this layer alone shared | val accuracy | chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cands in result.candidates.items():
        for c in pareto(cands):
            spec = (
                ("dense", "-", "-", "-", "-")
                if c.spec is None
                else (c.spec.K, f"{c.spec.p:g}", c.spec.d, c.spec.bits, f"{c.spec.beta:g}")
            )
            mark = "**yes**" if c == result.chosen[name] else ""
            lines.append(
                f"| {name} | {' | '.join(map(str, spec))} | {c.bits:.0f} | {c.val_loss:.4f}"
                f" | {100 * c.val_acc:.2f}% | {mark} |"
            )
    return "\n".join(lines)


def _layer_bits(model: nn.Module, name: str) -> float:
    return float(next(la for la in account(model).layers if la.name == name).bits_before)


def allocate(candidates: dict[str, list[Candidate]], budget: float, dense_loss: float) -> dict[str, Candidate]:
    """One candidate per layer with total bits <= ``budget``, minimizing the summed loss increase over
    ``dense_loss``, by bisection on the price per bit."""

    def pick(price: float) -> dict[str, Candidate]:
        return {
            name: min(cands, key=lambda c: (c.val_loss - dense_loss) + price * c.bits)
            for name, cands in candidates.items()
        }

    def bits(choice: dict[str, Candidate]) -> float:
        return sum(c.bits for c in choice.values())

    cheapest = {name: min(cands, key=lambda c: c.bits) for name, cands in candidates.items()}
    if bits(cheapest) > budget:
        raise DeepKMeansError(
            f"no choice of the candidates fits {budget:.0f} bits (the smallest takes {bits(cheapest):.0f});"
            " lower the target compression ratio"
        )
    low, high = 0.0, 1.0
    while bits(pick(high)) > budget:
        high *= 4.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if bits(pick(mid)) > budget else (low, mid)
    return _fill(pick(high), candidates, budget)


def _fill(chosen: dict[str, Candidate], candidates: dict[str, list[Candidate]], budget: float) -> dict[str, Candidate]:
    """Spend the bits the price left unused: repeatedly take the upgrade (a lower-loss candidate of one layer)
    with the largest loss decrease per added bit that still fits the budget."""
    chosen = dict(chosen)
    while True:
        spare = budget - sum(c.bits for c in chosen.values())
        best, gain = None, 0.0
        for name, cands in candidates.items():
            now = chosen[name]
            for c in cands:
                added = c.bits - now.bits
                if c.val_loss < now.val_loss and added <= spare:
                    value = (now.val_loss - c.val_loss) / max(added, 1e-9)
                    if value > gain:
                        best, gain = c, value
        if best is None:
            return chosen
        chosen[best.layer] = best


@dataclass(frozen=True)
class JointCheck:
    """The chosen candidates compressed together and measured on the validation batches."""

    chosen: dict[str, Candidate]
    config: CompressConfig
    val_loss: float
    val_acc: float
    paper_cr: float


def _joint(model: nn.Module, chosen: dict[str, Candidate], val: Batches, device: torch.device, seed: int) -> JointCheck:
    config = CompressConfig(layers={name: c.spec for name, c in chosen.items()}, seed=seed)
    shared = compress(model, config)
    loss, acc = evaluate(shared, val, device)
    return JointCheck(chosen, config, loss, acc, account(shared).paper_cr)


def tune(
    model: nn.Module,
    val: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    *,
    target_cr: float | None = None,
    max_drop: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
    grid: Grid = Grid(),
    candidates: dict[str, list[Candidate]] | None = None,
) -> TuneResult:
    """Choose K / p / d per layer on ``val`` for a paper-accounting ``target_cr``, or the largest CR whose
    validation accuracy drop stays within ``max_drop`` percentage points (both: the target, checked).

    ``val``: :class:`~deepkmeans.data.Batches`, a ``DataLoader`` or any re-iterable of ``(x, y)`` batches of
    held-out training examples, as :func:`~deepkmeans.measure.measure` takes; ``device``: where to evaluate
    (default: where the model lives). ``candidates``: sensitivities measured before (:func:`sensitivities`),
    to choose for several targets without measuring again. Compression is post-training here; re-training
    with the chosen config then recovers accuracy.
    """
    if target_cr is None and max_drop is None:
        raise ConfigError("tune needs a target compression ratio, a maximum accuracy drop, or both")
    if target_cr is not None and target_cr <= 1:
        raise ConfigError(f"the target compression ratio must be > 1, got {target_cr}")
    if max_drop is not None and max_drop < 0:
        raise ConfigError(f"the maximum accuracy drop must be >= 0 points, got {max_drop}")
    if target_cr is not None and candidates is None:
        check_reachable(model, target_cr, grid)
    started = time.perf_counter()
    device = device or model_device(model)
    candidates = candidates or sensitivities(model, val, device, seed=seed, progress=progress, grid=grid)
    dense_loss, dense_acc = evaluate(model, val, device)
    total = account(model)
    fixed = total.bits_before - sum(_layer_bits(model, name) for name in candidates)

    def attempt(cr: float) -> JointCheck:
        return _joint(model, allocate(candidates, total.bits_before / cr - fixed, dense_loss), val, device, seed)

    best = attempt(target_cr) if max_drop is None else _largest_within(attempt, dense_acc, max_drop, target_cr)
    return TuneResult(
        best.config,
        candidates,
        best.chosen,
        dense_loss,
        dense_acc,
        best.val_loss,
        best.val_acc,
        best.paper_cr,
        target_cr or best.paper_cr,
        time.perf_counter() - started,
    )


def _largest_within(
    attempt: Callable[[float], JointCheck], dense_acc: float, max_drop: float, target_cr: float | None
) -> JointCheck:
    """The largest CR (up to ``target_cr``, else 1024) whose joint validation accuracy stays within ``max_drop``
    points. Accuracy is not monotone in the CR asked for (the allocation minimizes loss, not errors), so a
    geometric grid of CRs is checked, then bisected between the largest that held and the next."""

    def within(cr: float) -> JointCheck | None:
        try:
            result = attempt(cr)
        except DeepKMeansError:  # nothing fits this budget
            return None
        return result if 100 * (dense_acc - result.val_acc) <= max_drop else None

    top = target_cr or 1024.0
    grid = [top ** (i / GRID_STEPS) for i in range(1, GRID_STEPS + 1)]
    held = [(cr, r) for cr in grid if (r := within(cr)) is not None]
    if not held:
        raise DeepKMeansError(f"no compression ratio kept the validation accuracy within {max_drop} points")
    low, best = held[-1]
    high = next((cr for cr in grid if cr > low), None)
    for _ in range(4 if high else 0):
        mid = math.sqrt(low * high)
        result = within(mid)
        if result is None:
            high = mid
        else:
            low, best = mid, result
    return best
