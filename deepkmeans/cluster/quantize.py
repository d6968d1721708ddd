"""The compression step for one layer: rows -> K centers + assignments, with the sparsity-p option.

Sparsity p (reference deploy code): the fraction p of rows closest to the layer's mean row form one
cluster (index 0) whose center is their mean; the other rows are clustered into K-1 centers. The
dominant cluster is what makes the entropy-coded indexes cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepkmeans.cluster.kmeans import kmeans

IMPORTANCE_FLOOR = 1e-3  # added to importance normalized to mean 1 (refine_rate_distortion)


@dataclass(frozen=True)
class RowClustering:
    """K shared centers ``(K, d)`` and the center index of each of the N rows."""

    centers: torch.Tensor
    assignments: torch.Tensor

    def reconstruct(self) -> torch.Tensor:
        """The weight-shared rows: every row replaced by its center."""
        return self.centers[self.assignments]


def sparse_count(n_rows: int, sparsity_p: float) -> int:
    """Number of rows that join the dominant cluster for a given p."""
    return int(math.floor(sparsity_p * n_rows + 0.5))


def cluster_rows(
    rows: torch.Tensor,
    k: int,
    sparsity_p: float = 0.0,
    *,
    seed: int = 0,
    beta: float = 0.0,
    importance: torch.Tensor | None = None,
    fast: bool = False,
) -> RowClustering:
    """Cluster ``rows`` into ``k`` centers exactly as compression does (k-means++, Lloyd, sparsity p), then, for
    ``beta`` > 0 or an ``importance`` per weight, refine with :func:`refine_rate_distortion`. ``fast``: the
    rows outside the dominant cluster go to k-means' fast path (``kmeans(..., fast=True)``).

    Callers decide beforehand whether ``k >= N`` means "leave dense"; here ``k`` is honoured as given.
    """
    base = _cluster_plain(rows, k, sparsity_p, seed, fast)
    if beta == 0 and importance is None:
        return base
    sparse = sparse_count(rows.shape[0], sparsity_p) if k > 1 else 0
    frozen = base.assignments == 0 if sparse else None
    return refine_rate_distortion(rows, base.assignments, k, beta, importance, frozen=frozen)


def _cluster_plain(rows: torch.Tensor, k: int, sparsity_p: float, seed: int, fast: bool = False) -> RowClustering:
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"rows must be a non-empty (N, d) matrix, got shape {tuple(rows.shape)}")
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if not 0.0 <= sparsity_p < 1.0:
        raise ValueError(f"sparsity p must be in [0, 1), got {sparsity_p}")
    rows = rows.detach()
    sparse_idx, rest_idx = _split_sparse(rows, k, sparsity_p)
    if sparse_idx.numel() == 0:
        result = kmeans(rows, k, seed=seed, fast=fast)
        return RowClustering(result.centers, result.assignments)
    assignments = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    centers = [rows[sparse_idx].mean(dim=0, keepdim=True)]
    if rest_idx.numel() > 0:
        rest = kmeans(rows[rest_idx], k - 1, seed=seed, fast=fast)
        assignments[rest_idx] = rest.assignments + 1
        centers.append(rest.centers)
    return RowClustering(torch.cat(centers).to(rows.dtype), assignments)


def _split_sparse(
    rows: torch.Tensor, k: int, sparsity_p: float, sparse_in_order: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the dominant (sparse) cluster's rows and of the rest, by distance to the mean row, ties to the
    lower row index; both in order of distance. ``sparse_in_order=False`` returns the sparse rows in index order
    (the same set), selecting them in linear time and sorting only the rest."""
    n_sparse = sparse_count(rows.shape[0], sparsity_p) if k > 1 else 0
    if n_sparse == 0:
        return rows.new_zeros(0, dtype=torch.int64), torch.arange(rows.shape[0], device=rows.device)
    dist = (rows - rows.mean(dim=0, keepdim=True)).pow(2).sum(dim=1)
    if sparse_in_order:
        # Stable sort so ties resolve by row index and the result is deterministic.
        order = torch.sort(dist, stable=True).indices
        return order[:n_sparse], order[n_sparse:]
    threshold = torch.kthvalue(dist.cpu(), n_sparse).values.to(dist.device)
    sparse = dist < threshold
    ties = torch.nonzero(dist == threshold).flatten()
    sparse[ties[: n_sparse - int(sparse.sum())]] = True
    rest = torch.nonzero(~sparse).flatten()
    return torch.nonzero(sparse).flatten(), rest[torch.sort(dist[rest], stable=True).indices]


def refine_rows(
    rows: torch.Tensor, previous: torch.Tensor, k: int, sparsity_p: float = 0.0, iters: int = 3, beta: float = 0.0
) -> RowClustering:
    """Warm-started k-means: Lloyd iterations from the previous assignments, with sparsity p reapplied (with
    ``beta`` > 0, rate-aware iterations: :func:`refine_rate_distortion`).

    Between two F refreshes of re-training the weights move little, so a few Lloyd steps from the last
    clustering reach what a cold k-means++ run would, at a fraction of its cost.
    """
    rows = rows.detach()
    sparse_idx, rest_idx = _split_sparse(rows, k, sparsity_p, sparse_in_order=False)
    if beta > 0:
        labels = previous.to(torch.int64).clamp(0, k - 1)
        frozen = None
        if sparse_idx.numel():
            frozen = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
            frozen[sparse_idx] = True
            labels = torch.where(frozen, 0, labels)
        return refine_rate_distortion(rows, labels, k, beta, frozen=frozen, iters=iters)
    offset = 1 if sparse_idx.numel() else 0
    assignments = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    centers = [rows[sparse_idx].mean(dim=0, keepdim=True)] if offset else []
    if rest_idx.numel():
        rest = rows[rest_idx]
        k_rest = k - offset
        labels = (previous[rest_idx] - offset).clamp(0, k_rest - 1)
        means = _means(rest, labels, k_rest, rest.new_zeros(k_rest, rows.shape[1]))
        for _ in range(iters):
            labels = torch.cdist(rest, means).argmin(dim=1)
            means = _means(rest, labels, k_rest, means)
        assignments[rest_idx] = labels + offset
        centers.append(means)
    return RowClustering(torch.cat(centers).to(rows.dtype), assignments)


def refine_rate_distortion(
    rows: torch.Tensor,
    assignments: torch.Tensor,
    k: int,
    beta: float,
    importance: torch.Tensor | None = None,
    *,
    frozen: torch.Tensor | None = None,
    iters: int = 30,
) -> RowClustering:
    """Entropy-constrained k-means (Chou, Lookabaugh and Gray's ECVQ) from ``assignments``, optionally weighted.

    Alternates: each row takes the center minimizing ``D(row, c_k) / s + beta * (-log2 pi_k)``, with D the
    squared error weighted per weight by ``importance`` (e.g. squared gradients; None: plain squared error),
    ``s`` the layer's mean weighted squared deviation from its mean row and ``pi_k`` the cluster's share of
    the rows; then each center becomes its rows' (weighted) mean and the shares are recounted. Every step
    lowers ``sum D / s + beta * N * H``, so with ``beta`` > 0 rows leave clusters whose index costs more than
    the error it saves. ``frozen`` rows (sparsity p's dominant cluster 0) keep their center: with ``beta`` > 0
    other rows may join cluster 0 when its cheap index pays for their error (p is then a floor on its share);
    with ``beta`` 0 they never do (the dominant cluster stays as p chose it). Clusters left empty are dropped:
    the result may have fewer than ``k`` centers.
    """
    rows = rows.detach()
    x = rows.to(torch.float32)
    weights = torch.ones_like(x) if importance is None else importance.detach().reshape(x.shape).to(x)
    # normalized to mean 1, plus a floor so that weights without measured importance still pick a near center
    weights = weights / weights.mean().clamp_min(torch.finfo(torch.float32).tiny) + IMPORTANCE_FLOOR
    mean = (weights * x).sum(0) / weights.sum(0).clamp_min(torch.finfo(torch.float32).tiny)
    spread = float((weights * (x - mean) ** 2).sum(1).mean())
    labels = assignments.to(torch.int64).clone()
    centers = _weighted_means(x, weights, labels, k, x.new_zeros(k, x.shape[1]))
    if spread > 0:
        for _ in range(iters):
            counts = torch.bincount(labels, minlength=k).to(torch.float64)
            rate = -torch.log2(counts / counts.sum()).to(torch.float32)  # inf for an empty cluster
            penalty = beta * rate if beta > 0 else torch.where(counts > 0, 0.0, float("inf")).to(torch.float32)
            if frozen is not None and beta == 0:
                penalty = penalty.clone()
                penalty[0] = float("inf")
            new = _cheapest(x, weights, centers, penalty, spread)
            if frozen is not None:
                new = torch.where(frozen, labels, new)
            if torch.equal(new, labels):
                break
            labels = new
            centers = _weighted_means(x, weights, labels, k, centers)
    used = torch.bincount(labels, minlength=k) > 0
    remap = torch.cumsum(used, 0) - 1
    return RowClustering(centers[used].to(rows.dtype), remap[labels])


def _cheapest(
    x: torch.Tensor, weights: torch.Tensor, centers: torch.Tensor, penalty: torch.Tensor, spread: float
) -> torch.Tensor:
    """Per row, the center of least weighted squared error / ``spread`` + ``penalty`` (rows in blocks)."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    step = max(1, 2**22 // max(centers.shape[0], 1))
    for start in range(0, x.shape[0], step):
        xs, ws = x[start : start + step], weights[start : start + step]
        # sum_j w_ij (x_ij - c_kj)^2 = sum_j w x^2 - 2 (w x) . c_k + w . c_k^2
        cost = (ws * xs * xs).sum(1, keepdim=True) - 2 * (ws * xs) @ centers.T + ws @ (centers * centers).T
        out[start : start + step] = (cost.clamp_min(0) / spread + penalty).argmin(1)
    return out


def _weighted_means(
    x: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, k: int, fallback: torch.Tensor
) -> torch.Tensor:
    """Per cluster and column, the weighted mean of its rows; an empty cluster keeps its ``fallback`` center."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, labels, weights * x)
    mass = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, labels, weights)
    return torch.where(mass > 0, sums / mass.clamp_min(torch.finfo(x.dtype).tiny), fallback)


def _means(rows: torch.Tensor, labels: torch.Tensor, k: int, fallback: torch.Tensor) -> torch.Tensor:
    """Cluster means; an empty cluster keeps its ``fallback`` center."""
    sums = torch.zeros(k, rows.shape[1], dtype=rows.dtype, device=rows.device).index_add(0, labels, rows)
    counts = torch.bincount(labels, minlength=k).to(rows.dtype)
    return torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], fallback)


def entropy_bits(assignments: torch.Tensor, k: int) -> float:
    """Empirical entropy H (bits per index) of the assignment distribution."""
    counts = torch.bincount(assignments.flatten().cpu(), minlength=k).double()
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * probs.log2()).sum())


def hardness(weight: torch.Tensor, quantized: torch.Tensor) -> float:
    """Relative quantization error ||W - Q(W)||_F / ||W||_F: lower means harder assignments."""
    norm = float(weight.detach().norm())
    return float((weight.detach() - quantized).norm()) / norm if norm > 0 else 0.0
