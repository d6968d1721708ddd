"""k-means for filter rows: k-means++ seeding, Lloyd iterations, and an exact 1-D solver.

The shapes are specific: short rows (d = 1..5), many of them (N up to ~10^6), few centers (K up to a few
hundred). Everything runs in torch on the rows' device, except, for CPU rows, mask-to-index compaction
(numpy's flatnonzero is several times faster than torch.nonzero). Gathers and scatters in Lloyd's hot loop
use index_select / index_copy_ (several times faster than ``t[idx]``).

d == 1 (the 1x1 shortcuts) needs no randomness and runs on the host in numpy (``kmeans1d``): the exact
DP over the sorted distinct values when ``k * M <= DP_MAX_WORK``, else the same DP over coarse groups of
sorted values, polished by sorted Lloyd.

d >= 2 (the 3x3 convolutions) runs greedy k-means++ and then exact Lloyd iterations, made cheap by:
- a float32 GEMM ``[-2c, 1, |c|^2] @ [x, |x|^2, 1]^T`` per cache-sized block for the nearest-center
  search, with the center index packed into the low mantissa bits of the (non-negative) distance, so one
  integer min-reduction yields distance and argmin together (torch's argmin over a short axis is slow),
  and a second one over ``(bits - min - 1) & INT32_MAX`` the runner-up (no boolean mask: masked_fill
  and the comparison cost several times a min-reduction); Q is stored transposed for the GEMM;
- margins: a row is searched again only once the centers have moved enough to possibly change its
  nearest center (see ``_Lloyd``), so late iterations touch only rows near a cluster boundary;
- float64 cluster sums updated only by rows that changed cluster, giving the inertia of the new means
  as ``sum |x|^2 - sum_k |S_k|^2 / n_k`` without a pass over the rows;
- for large N, seeding and a first Lloyd pass on a random sample, then passes on samples 4x larger each,
  so Lloyd on all rows starts close (few full passes on millions of rows).
Lloyd stops when an iteration lowers the inertia by less than ``tol`` (relative), when no row changes
cluster, or after ``max_iter`` iterations (per pass). The returned assignment is exact: the margins
certify each row's nearest returned (input-dtype) center beyond the float32 error bound, and rows they
cannot certify are assigned with float64 direct differences, ties to the lowest index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from deepkmeans.cluster import kmeans1d

# Bytes of float32 distances per block: the search is memory-bound, so cache-sized blocks are fastest
# (and memory stays bounded for any N x K).
_BLOCK_BYTES = 2**19
# Exact 1-D dynamic program when K * (distinct values) is at most this. Its cost grows like
# K * M * log2(M) vectorized numpy element steps (plus K * log2(M) numpy calls): ~15 ms at this bound on
# one core. Above it, a coarse DP plus sorted 1-D Lloyd (O(K log M) per iteration after one sort) takes
# over: a few ms, within ~5e-4 of the optimum.
DP_MAX_WORK = 2**16
# Sample size for seeding and the first Lloyd pass: this many rows per center, at least _SAMPLE_MIN; used
# when N exceeds twice the sample size.
_SAMPLE_PER_CENTER = 256
_SAMPLE_MIN = 2**14
# Look-ahead of Lloyd's near set, in recent center movements (see _Lloyd): larger means rarer scans of
# all rows but a larger set to test each iteration.
_HORIZON = 4.0
# Tolerance of the Lloyd pass on the first sample: it only provides a starting point for larger samples.
_SAMPLE_TOL = 1e-4
# Each further sample is this many times the last (see _sample_centers).
_SAMPLE_GROWTH = 4
# Lloyd on a sample is cheap next to a pass over all rows: it may take this many times max_iter iterations.
_GROWTH_ITER_FACTOR = 3
# float32 unit roundoff; bounds the error of the distance GEMM (see _Lloyd.__init__).
_U32 = 2.0**-24
_INT32_MAX = 2**31 - 1
# The fast path (``kmeans(..., fast=True)``): k-means++ and at most _FAST_ITER Lloyd iterations on a sample of
# _FAST_PER_CENTER rows per center (faiss's defaults: 25 iterations, at most 256 rows per center), then one
# exact assignment of every row. It is taken when N exceeds twice the sample; ``auto`` configs take it from
# FAST_MIN_ROWS rows (see deepkmeans/plan.py).
_FAST_PER_CENTER = 256
_FAST_ITER = 25
# k-means++ runs on the first _FAST_SEED_PER_CENTER rows per center of the sample: its greedy trials cost
# (2 + log K) distance passes per center, more than all the Lloyd iterations on the whole sample.
_FAST_SEED_PER_CENTER = 64
FAST_MIN_ROWS = 2**19
# Rows per block of the fast path's final assignment (float64 copies exist for one block at a time).
_ASSIGN_ROWS = 2**16


@dataclass(frozen=True)
class KMeansResult:
    """Centers ``(K', d)`` in the input dtype/device, each row's center index, and the total squared error.

    ``K' = min(k, number of distinct rows)``: asking for at least as many centers as there are distinct
    rows returns each distinct row once (sorted, zero inertia) rather than padding with duplicates.
    """

    centers: torch.Tensor
    assignments: torch.Tensor
    inertia: float


def kmeans(
    rows: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 100, tol: float = 1e-6, fast: bool = False
) -> KMeansResult:
    """Cluster the ``(N, d)`` rows into ``k`` centers: k-means++ then Lloyd; for d == 1 the exact DP
    when ``k * N <= DP_MAX_WORK`` (distinct values), else a coarse exact DP polished by sorted Lloyd.

    Deterministic: the same rows, k and seed give bitwise-identical results on CPU (d == 1 uses no
    randomness). Lloyd stops when an iteration lowers the inertia by less than ``tol`` (relative), no
    assignment changes, or after ``max_iter`` iterations. Each row is assigned to its nearest returned
    center (float64 distance, ties to the lowest index).

    ``fast``: when N is over twice ``_FAST_PER_CENTER * k``, the centers come from a random sample of that
    many rows alone (for d == 1 its sorted 1-D k-means, else k-means++ and at most ``_FAST_ITER`` Lloyd
    iterations), then every row is assigned exactly to its nearest returned center: one pass over the rows,
    for an inertia a few percent above the exact path's. On fewer rows it is the exact path.
    """
    _validate(rows, k)
    n, d = rows.shape
    if fast and k > 1 and n > 2 * _FAST_PER_CENTER * k:
        generator = torch.Generator(device=rows.device)
        generator.manual_seed(seed)
        result = _cluster_fast(rows, k, generator, min(max_iter, _FAST_ITER), tol)
        if result is not None:
            return result
    if d == 1:
        return _cluster_1d(rows, k, exact=None, max_iter=max_iter, tol=tol)
    x = rows.detach().to(torch.float64)
    if k >= n:
        return _distinct_rows(rows, x)
    if k == 1:
        return _finish(rows, x, x.mean(dim=0, keepdim=True))
    generator = torch.Generator(device=rows.device)
    generator.manual_seed(seed)
    return _cluster(rows, x, k, generator, max_iter, tol)


def kmeans_1d_exact(rows: torch.Tensor, k: int) -> KMeansResult:
    """Globally optimal k-means of ``(N, 1)`` rows, whatever their size (no cost threshold).

    Optimal 1-D clusters are runs of the sorted values, so the best k runs come from a dynamic program;
    its run-cost matrix is Monge, so split points are monotone and each of the k layers is solved by
    divide and conquer in O(N log N).
    """
    _validate(rows, k)
    if rows.shape[1] != 1:
        raise ValueError(f"kmeans_1d_exact needs rows of length 1, got shape {tuple(rows.shape)}")
    return _cluster_1d(rows, k, exact=True)


def _cluster_1d(rows: torch.Tensor, k: int, *, exact: bool | None, max_iter: int = 0, tol: float = 0.0) -> KMeansResult:
    """k-means of ``(N, 1)`` rows on the host over their sorted distinct values (see ``kmeans1d``): the
    exact program if ``exact`` (None: when ``k * M <= DP_MAX_WORK``), else near-optimal sorted Lloyd.

    Centers are rounded to the input dtype, then each distinct value goes to its nearest rounded center
    (float64, ties to the lowest index); rows inherit their value's center.
    """
    x = rows.detach().to(device="cpu", dtype=torch.float64).numpy()[:, 0]
    values, inverse, counts = kmeans1d.distinct(x)
    if values.size <= k:
        centers = values
    elif k == 1:
        centers = np.array([np.dot(values, counts) / counts.sum()])
    elif exact or (exact is None and k * values.size <= DP_MAX_WORK):
        centers = kmeans1d.optimal_centers(values, counts, k)
    else:
        centers = kmeans1d.near_optimal_centers(values, counts, k, max_iter, tol)
    out = torch.from_numpy(centers).to(rows.dtype)
    rounded = out.to(torch.float64).numpy()
    nearest = kmeans1d.nearest(values, rounded)
    inertia = float(np.dot(counts, np.square(values - rounded[nearest])))
    assignments = torch.from_numpy(nearest[inverse].astype(np.int64, copy=False))
    return KMeansResult(out.unsqueeze(1).to(rows.device), assignments.to(rows.device), inertia)


# ----------------------------------------------------------------------------------------------------
# Validation and exact final assignment


def _validate(rows: torch.Tensor, k: int) -> None:
    if not isinstance(rows, torch.Tensor) or rows.ndim != 2:
        shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise ValueError(f"rows must be a 2-D (N, d) tensor, got {shape}")
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        raise ValueError(f"rows must be non-empty, got shape {tuple(rows.shape)}")
    if not rows.is_floating_point():
        raise ValueError(f"rows must be floating point, got {rows.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    # In blocks of rows: torch.isfinite makes several temporaries of the input's size (~6x it on CPU).
    step = max(1, _ASSIGN_ROWS * 16 // rows.shape[1])
    if not all(bool(torch.isfinite(rows[start : start + step]).all()) for start in range(0, rows.shape[0], step)):
        raise ValueError("rows contain NaN or infinite values")


def _distinct_rows(rows: torch.Tensor, x: torch.Tensor) -> KMeansResult:
    """Every distinct row is its own center (sorted lexicographically): exact, zero inertia."""
    centers, assignments = torch.unique(x, dim=0, return_inverse=True)
    return KMeansResult(centers.to(rows.dtype), assignments.to(torch.int64), 0.0)


def _finish(rows: torch.Tensor, x: torch.Tensor, centers: torch.Tensor) -> KMeansResult:
    """Round centers to the input dtype, then assign each row to its nearest rounded center exactly."""
    out = centers.to(rows.dtype)
    exact = out.to(torch.float64)
    assignments = _nearest_exact(x, exact)
    return KMeansResult(out, assignments, _inertia(x, exact, assignments))


def _inertia(x: torch.Tensor, centers: torch.Tensor, assignments: torch.Tensor) -> float:
    return float((x - centers[assignments]).square_().sum())


def _nearest_exact(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Nearest center by float64 direct differences (no |x|^2 - 2xc + |c|^2 cancellation); ties -> lowest."""
    n, d = x.shape
    k = centers.shape[0]
    assignments = torch.empty(n, dtype=torch.int64, device=x.device)
    step = max(1, 4 * _BLOCK_BYTES // (8 * k))
    for start in range(0, n, step):
        block = x[start : start + step]
        dist = torch.zeros(block.shape[0], k, dtype=torch.float64, device=x.device)
        diff = torch.empty_like(dist)
        for j in range(d):
            torch.sub(block[:, j : j + 1], centers[:, j], out=diff)
            dist.addcmul_(diff, diff)
        assignments[start : start + step] = dist.argmin(dim=1)
    return assignments


# ----------------------------------------------------------------------------------------------------
# Seeding and Lloyd for d >= 2


def _flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices (int64) of the true entries of a 1-D mask. On CPU numpy's is several times faster than
    torch.nonzero (which is branchy: up to 10x slower on masks with ~50% true entries)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()).astype(np.int64, copy=False))
    return torch.nonzero(mask).flatten()


def _augment(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``P = [-2x, 1, |x|^2]`` and ``Q = [x, |x|^2, 1]``, both (N, d+2): ``P_a @ Q_b^T`` is the
    matrix of squared distances between point sets a and b in one GEMM."""
    x32 = x.to(torch.float32)
    ones = torch.ones(x.shape[0], 1, dtype=torch.float32, device=x.device)
    norms = x32.square().sum(dim=1, keepdim=True)
    return torch.cat([-2.0 * x32, ones, norms], dim=1), torch.cat([x32, norms, ones], dim=1)


def _seed(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor | None:
    """Greedy k-means++ (as in scikit-learn): of ``2 + log k`` D^2-sampled candidates keep the one that
    lowers the potential most. Returns seed indices, or None when there are at most k distinct rows
    (checked exactly once the potential has vanished to rounding level)."""
    n = x.shape[0]
    p, q = _augment(x)
    q = q.T
    trials = 2 + int(math.log(k))
    chosen = [int(torch.randint(n, (1,), generator=generator, device=x.device))]
    closest = (p[chosen] @ q).clamp_(min=0.0)[0]
    scale = float(closest.sum(dtype=torch.float64))
    checked = False
    for _ in range(1, k):
        cumulative = closest.cumsum(dim=0, dtype=torch.float64)
        potential = float(cumulative[-1])
        if not checked and potential <= 1e-6 * scale:
            checked = True
            if torch.unique(x, dim=0).shape[0] <= k:
                return None
        draws = torch.rand(trials, generator=generator, dtype=torch.float64, device=x.device) * potential
        candidates = torch.searchsorted(cumulative, draws, right=True).clamp_(max=n - 1)
        dist = torch.minimum((p[candidates] @ q).clamp_(min=0.0), closest)
        best = int(torch.argmin(dist.sum(dim=1, dtype=torch.float64)))
        chosen.append(int(candidates[best]))
        closest = dist[best]
    return torch.tensor(chosen, dtype=torch.int64, device=x.device)


class _Lloyd:
    """Lloyd iterations on centered float64 rows that only re-search rows whose nearest center may change.

    At its last search a row had margin g between its nearest center a and the runner-up. Each center
    j has moved by T_j in total since, and T_max sums the largest movement of every iteration; distances
    change by at most the movement, so the row's nearest center is still a while T_a + T_max - (their
    values at the search) < g. The row stores ``key = g + T_a + T_max`` (at the search) and is due once
    ``key <= T_a + T_max``. Since T_a <= T_max, only rows with ``key <= 2 T_max`` can be due: rows whose
    key is within a few recent movements form the ``near`` set (with compact copies of key and center
    index), and only it is tested until T_max passes that horizon.
    """

    def __init__(self, x: torch.Tensor, centers: torch.Tensor, slack: float = 0.0) -> None:
        self.x = x
        self.k = centers.shape[0]
        # Q of _augment, built transposed: (d + 2, N), the GEMM is fastest with contiguous columns.
        x32 = x.to(torch.float32)
        self.qt = torch.empty(x.shape[1] + 2, x.shape[0], dtype=torch.float32, device=x.device)
        self.qt[: x.shape[1]] = x32.T
        self.qt[-2] = x32.square().sum(dim=1)
        self.qt[-1] = 1.0
        self.total_sq = float(x.square().sum())
        # Error bound of one float32 distance^2 from the GEMM: the terms |x|^2, 2|x.c|, |c|^2 sum to at
        # most (|x| + |c|)^2 <= 4 R^2 (centers are means, so |c| <= R), with d + 8 roundings.
        radius_sq = float(self.qt[-2].max()) * (1.0 + 1e-6)
        self.gemm_error = max(4.0 * radius_sq * (x.shape[1] + 8) * _U32, 1e-300)
        self.index_bits = max(1, (self.k - 1).bit_length())
        # Relative error of a distance^2 whose low index_bits mantissa bits were overwritten, plus room
        # for rounding the key to float32. ``slack``: distances this close count as tied in float64.
        self.truncation = 2.0 ** (self.index_bits - 23) + 2.0**-20
        self.slack = slack
        self.lanes = torch.arange(self.k, dtype=torch.int32, device=x.device).unsqueeze(1)
        self.centers = centers
        self.travel = torch.zeros(self.k, dtype=torch.float32, device=x.device)
        self.travel_max = 0.0
        self.assignments, margin = self._search(None)
        self.key = margin
        self._recount()
        self._rescan(0.0)

    def _recount(self) -> None:
        self.sums = torch.zeros(self.k, self.x.shape[1], dtype=torch.float64, device=self.x.device)
        self.sums.index_add_(0, self.assignments, self.x)
        self.counts = torch.bincount(self.assignments, minlength=self.k).to(torch.float64).unsqueeze(1)

    def _rescan(self, increment: float) -> None:
        """Collect the rows that may become due within a few more movements of size ``increment``.

        Also rebases keys to zero travel, so their float32 rounding stays relative to the margins.
        """
        self.key -= self.travel.index_select(0, self.assignments).add_(self.travel_max)
        self.travel.zero_()
        self.travel_max = 0.0
        self.horizon = _HORIZON * increment
        self.near = _flatnonzero(self.key <= 2.0 * self.horizon)
        self.near_key = self.key.index_select(0, self.near)
        self.near_assignments = self.assignments.index_select(0, self.near)

    def _search(self, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest center of rows ``index`` (all rows if None) and a lower bound on their margin."""
        qt = self.qt if index is None else self.qt.index_select(1, index)
        first, second = _two_nearest(self.centers, qt, self.lanes, self.index_bits)
        assignments = first.bitwise_and(2**self.index_bits - 1).long()
        low = ~(2**self.index_bits - 1)
        d1 = first.bitwise_and_(low).view(torch.float32).sqrt_()
        d2 = second.bitwise_and_(low).view(torch.float32).sqrt_()
        # A distance with squared error E is off by at most min(sqrt(E), E / d). With E = gemm_error +
        # truncation * d^2 that is about min(sqrt(gemm_error), gemm_error / d) + truncation * d, which for
        # d1 <= d2 is at most `bound`; the margin d2 - d1 is off by at most 2 * bound: subtract twice that.
        bound = torch.div(self.gemm_error, d1).clamp_(max=self.gemm_error**0.5).add_(d2, alpha=self.truncation)
        return assignments, torch.sub(d2, d1).sub_(bound, alpha=4.0).sub_(self.slack)

    def mean_centers(self) -> torch.Tensor:
        """Cluster means; a cluster left empty keeps its current center."""
        return torch.where(self.counts > 0, self.sums / self.counts, self.centers)

    def inertia(self) -> float:
        """Squared error of the current assignment at its cluster means."""
        return max(0.0, self.total_sq - float((self.sums.square() / self.counts.clamp(min=1.0)).sum()))

    def energy(self) -> float:
        """Squared error of the current assignment at the current centers."""
        c = self.centers
        return self.total_sq - 2.0 * float((self.sums * c).sum()) + float((self.counts * c.square()).sum())

    def move_centers(self, centers: torch.Tensor) -> torch.Tensor:
        """Adopt ``centers``; returns the rows whose nearest center may have changed."""
        movement = (centers - self.centers).square_().sum(dim=1).sqrt_().float()
        increment = float(movement.max())
        self.travel += movement
        self.travel_max += increment
        self.centers = centers
        if self.travel_max > self.horizon or self.horizon - self.travel_max > 4.0 * _HORIZON * increment:
            self._rescan(increment)
        reach = self.travel.index_select(0, self.near_assignments).add_(self.travel_max)
        self.due_position = _flatnonzero(self.near_key <= reach)
        return self.near.index_select(0, self.due_position)

    def assign(self, centers: torch.Tensor) -> int:
        """Move to ``centers``, re-search the rows whose margin may be used up, update sums and counts;
        returns how many rows changed cluster."""
        due = self.move_centers(centers)
        if due.numel() == 0:
            return 0
        new, margin = self._search(due)
        key = margin.add_(self.travel.index_select(0, new)).add_(self.travel_max)
        self.key.index_copy_(0, due, key)
        self.near_key.index_copy_(0, self.due_position, key)
        self.near_assignments.index_copy_(0, self.due_position, new)
        old = self.assignments.index_select(0, due)
        changed = _flatnonzero(new != old)
        if changed.numel():
            self._move_rows(due.index_select(0, changed), old.index_select(0, changed), new.index_select(0, changed))
        return changed.numel()

    def _move_rows(self, rows: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        x = self.x.index_select(0, rows)
        self.sums.index_add_(0, old, x, alpha=-1.0).index_add_(0, new, x)
        ones = torch.ones(rows.numel(), 1, dtype=torch.float64, device=x.device)
        self.counts.index_add_(0, old, ones, alpha=-1.0).index_add_(0, new, ones)
        self.assignments.index_copy_(0, rows, new)

    def reseed_empty(self) -> bool:
        """Give each empty cluster the row farthest from its center (deterministic order)."""
        if float(self.counts.min()) > 0:
            return False
        empty = _flatnonzero(self.counts[:, 0] == 0)
        distance = (self.x - self.centers[self.assignments]).square_().sum(dim=1)
        far = torch.sort(distance, descending=True, stable=True).indices[: empty.numel()]
        self.assignments[far] = empty
        self.key[far] = -math.inf
        self._recount()
        self._rescan(0.0)
        return True

    def run(self, max_iter: int, tol: float) -> torch.Tensor:
        """Lloyd to convergence; returns the final cluster means (float64, centered coordinates)."""
        self.reseed_empty()
        previous = self.inertia()
        for _ in range(max_iter):
            changed = self.assign(self.mean_centers())
            if self.reseed_empty():
                previous = self.inertia()
                continue
            if changed == 0:
                break
            current = self.inertia()
            if previous - current <= tol * previous:
                break
            previous = current
        return self.mean_centers()

    def finish(self, centers: torch.Tensor, x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Exact assignments of the uncentered rows ``x`` to the uncentered ``centers`` and their inertia.

        Rows whose margin survives the move to ``centers`` keep their cluster; the others get a float64
        search. The inertia follows from the updated cluster sums.
        """
        due = self.move_centers(centers - mean)
        if due.numel():
            new = _nearest_exact(x[due], centers)
            old = self.assignments[due]
            changed = _flatnonzero(new != old)
            self._move_rows(due[changed], old[changed], new[changed])
        return self.assignments, max(0.0, self.energy())


def _two_nearest(
    centers: torch.Tensor, qt: torch.Tensor, lanes: torch.Tensor, index_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed (float32 distance^2 bits | center index) of the two nearest centers per column of ``qt``
    (the transposed ``Q`` of :func:`_augment`).

    A non-negative float32 viewed as int32 orders like the float, so after replacing the low
    ``index_bits`` mantissa bits by the center index (``lanes``) one integer min gives distance and argmin.
    The packed values of a row are distinct, so the runner-up is the minimum of the others.
    """
    k = centers.shape[0]
    c32 = centers.to(torch.float32)
    pc = torch.cat([c32 * -2.0, torch.ones_like(c32[:, :1]), c32.square().sum(dim=1, keepdim=True)], dim=1)
    low = ~(2**index_bits - 1)
    n = qt.shape[1]
    first = torch.empty(n, dtype=torch.int32, device=c32.device)
    second = torch.empty(n, dtype=torch.int32, device=c32.device)
    step = max(1, _BLOCK_BYTES // (4 * k))
    for start in range(0, n, step):
        bits = torch.mm(pc, qt[:, start : start + step]).clamp_(min=0.0).view(torch.int32)
        bits.bitwise_and_(low).bitwise_or_(lanes)
        best = torch.amin(bits, dim=0, out=first[start : start + step])
        # Runner-up without a mask: bits - best - 1 is -1 at the (unique) minimum and in [0, 2^31 - 1)
        # elsewhere; clearing the sign bit turns -1 into the int32 maximum.
        bits.sub_(best + 1).bitwise_and_(_INT32_MAX)
        torch.amin(bits, dim=0, out=second[start : start + step])
    second += first + 1
    return first, second


def _cluster(
    rows: torch.Tensor, x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int, tol: float
) -> KMeansResult:
    """k-means++ and Lloyd on centered rows (sample pass first when N is large), exact final assignment."""
    mean = x.mean(dim=0)
    centered = x - mean
    centers = _sample_centers(centered, k, generator, max_iter, tol)
    if centers is None:
        seeds = _seed(centered, k, generator)
        if seeds is None:
            return _distinct_rows(rows, x)
        centers = centered[seeds]
    # Centering rounds each coordinate by about |mean| * 2^-53: distances within that are ties.
    lloyd = _Lloyd(centered, centers, slack=1e-13 * float(mean.norm()))
    out = (lloyd.run(max_iter, tol) + mean).to(rows.dtype)
    assignments, inertia = lloyd.finish(out.to(torch.float64), x, mean)
    return KMeansResult(out, assignments, inertia)


def _sample_centers(
    x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int, tol: float
) -> torch.Tensor | None:
    """Seeds plus Lloyd on a random sample (with replacement) when N is over twice the sample size; on larger
    data, Lloyd again on samples ``_SAMPLE_GROWTH`` times larger each, each starting from the last centers,
    while a sample stays under half of N. Lloyd on all rows then starts close to its optimum: on 7.7M rows of
    d = 3 with K = 256 this took the whole k-means from ~660 s to ~45 s at 0.2% lower inertia."""
    size = max(_SAMPLE_MIN, _SAMPLE_PER_CENTER * k)
    if x.shape[0] <= 2 * size:
        return None
    sample = x[torch.randint(x.shape[0], (size,), generator=generator, device=x.device)]
    seeds = _seed(sample, k, generator)
    if seeds is None:
        return None
    centers = _Lloyd(sample, sample[seeds]).run(max_iter, max(tol, _SAMPLE_TOL))
    while 2 * _SAMPLE_GROWTH * size < x.shape[0]:
        size *= _SAMPLE_GROWTH
        sample = x[torch.randint(x.shape[0], (size,), generator=generator, device=x.device)]
        centers = _Lloyd(sample, centers).run(_GROWTH_ITER_FACTOR * max_iter, tol)
    return centers


# ----------------------------------------------------------------------------------------------------
# Fast path: centers from a sample, then one exact assignment of every row


def _cluster_fast(
    rows: torch.Tensor, k: int, generator: torch.Generator, max_iter: int, tol: float
) -> KMeansResult | None:
    """Centers trained on ``_FAST_PER_CENTER * k`` random rows (with replacement), every row assigned exactly.
    None when the sample has at most k distinct rows (the exact path then decides on all rows)."""
    size = _FAST_PER_CENTER * k
    sample = rows[torch.randint(rows.shape[0], (size,), generator=generator, device=rows.device)].detach()
    if rows.shape[1] == 1:
        centers = _cluster_1d(sample, k, exact=None, max_iter=max_iter, tol=tol).centers
        if centers.shape[0] < k:
            return None
        return _assign_1d(rows, centers)
    x = sample.to(torch.float64)
    mean = x.mean(dim=0)
    centered = x - mean
    seeding = centered[: _FAST_SEED_PER_CENTER * k]
    seeds = _seed(seeding, k, generator)
    if seeds is None:
        return None
    lloyd = _Lloyd(centered, seeding[seeds])
    out = (lloyd.run(max_iter, max(tol, _SAMPLE_TOL)) + mean).to(rows.dtype)
    assignments, inertia = _assign(rows, out.to(torch.float64), mean)
    return KMeansResult(out, assignments, inertia)


def _assign_1d(rows: torch.Tensor, centers: torch.Tensor) -> KMeansResult:
    """Each scalar row to its nearest center (float64, ties to the lowest index) in O(N log K), no sort of N."""
    x = rows.detach().to(device="cpu", dtype=torch.float64).numpy()[:, 0]
    exact = centers.to(device="cpu", dtype=torch.float64).numpy()[:, 0]
    nearest = kmeans1d.nearest(x, exact)
    inertia = float(np.square(x - exact[nearest]).sum())
    assignments = torch.from_numpy(nearest.astype(np.int64, copy=False)).to(rows.device)
    return KMeansResult(centers, assignments, inertia)


def _assign(rows: torch.Tensor, centers: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Exact nearest of the float64 ``centers`` for every row, and the inertia, a block of rows at a time.

    A float32 GEMM search (on rows centered at ``mean``) gives each row's two nearest centers; rows whose
    margin does not exceed the search's error bound get a float64 search of their own (:func:`_nearest_exact`).
    Memory beyond the output is one block's float64 rows and its distance blocks, whatever N.
    """
    n, d = rows.shape
    k = centers.shape[0]
    index_bits = max(1, (k - 1).bit_length())
    c = centers - mean
    c32 = c.to(torch.float32)
    pc = torch.cat([c32 * -2.0, torch.ones_like(c32[:, :1]), c32.square().sum(dim=1, keepdim=True)], dim=1)
    lanes = torch.arange(k, dtype=torch.int32, device=rows.device).unsqueeze(1)
    center_norm = float(c.square().sum(dim=1).max().sqrt())
    slack = 1e-13 * float(mean.norm())
    assignments = torch.empty(n, dtype=torch.int64, device=rows.device)
    inertia = 0.0
    for start in range(0, n, _ASSIGN_ROWS):
        x = rows[start : start + _ASSIGN_ROWS].detach().to(torch.float64)
        xc = x - mean
        qt = torch.empty(d + 2, x.shape[0], dtype=torch.float32, device=rows.device)
        qt[:d] = xc.T
        qt[d] = qt[:d].square().sum(dim=0)
        qt[d + 1] = 1.0
        # Error bound of one float32 distance^2 from the GEMM (as in _Lloyd.__init__, with |c| bounded apart).
        radius = (float(qt[d].max()) * (1.0 + 1e-6)) ** 0.5 + center_norm
        gemm_error = max(radius * radius * (d + 8) * _U32, 1e-300)
        first, second = _nearest_two_packed(pc, qt, lanes, index_bits)
        block = first.bitwise_and(2**index_bits - 1).long()
        due = _flatnonzero(~_certified(first, second, index_bits, gemm_error, slack))
        if due.numel():
            block.index_copy_(0, due, _nearest_exact(x.index_select(0, due), centers))
        assignments[start : start + x.shape[0]] = block
        inertia += float((x - centers.index_select(0, block)).square_().sum())
    return assignments, inertia


def _certified(
    first: torch.Tensor, second: torch.Tensor, index_bits: int, gemm_error: float, slack: float
) -> torch.Tensor:
    """Rows whose packed nearest center is certainly nearest: the margin to the runner-up exceeds the error of
    both distances (GEMM error, the cleared index bits, and ``slack`` for distances tied in float64). A
    negative packed distance (a row within rounding of a center) is never certified."""
    low = ~(2**index_bits - 1)
    d1 = first.bitwise_and(low).view(torch.float32).sqrt_()
    d2 = second.bitwise_and(low).view(torch.float32).sqrt_()
    truncation = 2.0 ** (index_bits - 23) + 2.0**-20
    bound = torch.div(gemm_error, d1).clamp_(max=gemm_error**0.5).add_(d2, alpha=truncation)
    margin = torch.sub(d2, d1).sub_(bound, alpha=4.0).sub_(slack)
    return (margin > 0) & (first >= 0)


def _nearest_two_packed(
    pc: torch.Tensor, qt: torch.Tensor, lanes: torch.Tensor, index_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`_two_nearest` for the final assignment, in fewer passes over each distance block: no clamp
    (a negative distance makes its row's packed minimum negative, and such rows are searched in float64), and
    the runner-up as the minimum once the winner's entry is overwritten with the int32 maximum."""
    k = pc.shape[0]
    low = ~(2**index_bits - 1)
    n = qt.shape[1]
    first = torch.empty(n, dtype=torch.int32, device=pc.device)
    second = torch.empty(n, dtype=torch.int32, device=pc.device)
    step = max(1, _BLOCK_BYTES // (4 * k))
    top = torch.full((1, step), _INT32_MAX, dtype=torch.int32, device=pc.device)
    for start in range(0, n, step):
        bits = torch.mm(pc, qt[:, start : start + step]).view(torch.int32)
        bits.bitwise_and_(low).bitwise_or_(lanes)
        best = torch.amin(bits, dim=0, out=first[start : start + step])
        winner = best.bitwise_and(2**index_bits - 1).long().unsqueeze(0)
        bits.scatter_(0, winner, top[:, : bits.shape[1]])
        torch.amin(bits, dim=0, out=second[start : start + step])
    return first, second
