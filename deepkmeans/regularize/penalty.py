"""The two forms of the k-means penalty R(W, F) = ||W - W F F^T||_F^2 on one layer's rows.

Rows are the ``N`` columns of ``W in R^{d x N}`` (each a filter row of length d). F is held fixed
between refreshes; these functions evaluate R and let autograd supply ``2 (W - W F F^T)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# Rows per contiguous tile in the column sums of the exact penalty's gradient (see _column_sums).
_TILE_ROWS = 2048
# Weights of a layer up to which the exact penalty keeps its residual from forward to backward (64 MiB as
# float32); above, backward recomputes it: one more pass, but peak memory stays near plain training's.
SAVE_RESIDUAL_MAX = 2**24


def spectral_basis(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k right singular vectors of W (as an (N, k) orthonormal F), from the d x d Gram matrix.

    Never forms an N x N matrix: eigen-decompose ``W W^T`` (d x d), then ``F = W^T U / s``.
    Singular values below a relative tolerance are dropped (those directions carry no energy).
    """
    w = rows.detach().to(torch.float64).T  # (d, N)
    evals, evecs = torch.linalg.eigh(w @ w.T)
    order = torch.argsort(evals, descending=True)[:k]
    evals, evecs = evals[order], evecs[:, order]
    keep = evals > evals.max().clamp_min(0) * 1e-12
    s = evals[keep].sqrt()
    f = (w.T @ evecs[:, keep]) / s
    return f.to(rows.dtype)


def spectral_penalty(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """||W - W F F^T||^2 for orthonormal F ``(N, k)``: the residual outside F's span."""
    return spectral_residual(rows, basis).pow(2).sum()


def spectral_residual(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``W - W F F^T`` in row form ``(N, d)``: half the gradient of the spectral penalty."""
    return rows - basis @ (basis.T @ rows)


def cluster_means(rows: torch.Tensor, assignments: torch.Tensor, k: int) -> torch.Tensor:
    """Mean row of each cluster (``W F F^T`` in row form); empty clusters get a zero row."""
    sums = torch.zeros(k, rows.shape[1], dtype=rows.dtype, device=rows.device)
    sums = sums.index_add(0, assignments, rows)
    counts = torch.bincount(assignments, minlength=k).clamp_min(1).to(rows.dtype)
    return sums / counts[:, None]


@dataclass(frozen=True)
class Partition:
    """Fixed assignments prepared once per F refresh for the per-step penalty.

    With sparsity p one cluster holds most rows; its residuals are computed by broadcasting and only
    the other rows go through index operations, which keeps the penalty cheap next to a training step.
    """

    k: int
    major: int
    minor_idx: torch.Tensor
    minor_labels: torch.Tensor
    counts: torch.Tensor
    assignments: torch.Tensor

    @classmethod
    def of(cls, assignments: torch.Tensor, k: int) -> Partition:
        """Indexes are kept as int32 (half the memory of int64 on large layers; every index op accepts them)."""
        counts = torch.bincount(assignments, minlength=k)
        major = int(torch.argmax(counts))
        index = assignments.to(torch.int32)
        minor_idx = torch.nonzero(index != major).flatten().to(torch.int32)
        return cls(k, major, minor_idx, index[minor_idx.long()], counts.clamp_min(1), index)


@functools.lru_cache(maxsize=256)
def _rows_per_tile(n: int) -> int:
    """The largest divisor of ``n`` up to ``_TILE_ROWS``: rows handled as one long contiguous tile."""
    return next(c for c in range(min(n, _TILE_ROWS), 0, -1) if n % c == 0)


def _column_sums(rows: torch.Tensor) -> torch.Tensor:
    """``rows.sum(dim=0)`` over ``(N / c, c * d)`` tiles of c rows: torch sums columns of few elements ~3x slower
    than long contiguous tiles (the sum is then reordered, so it may differ in the last bits)."""
    c = _rows_per_tile(rows.shape[0]) if rows.is_contiguous() else 1
    return rows.view(rows.shape[0] // c, c * rows.shape[1]).sum(dim=0).view(c, rows.shape[1]).sum(dim=0)


def _means(rows: torch.Tensor, part: Partition, column_sums: torch.Tensor) -> torch.Tensor:
    """Cluster means ``(K, d)``: the others summed over their rows, the dominant one from ``column_sums``."""
    minor = rows.index_select(0, part.minor_idx)
    sums = rows.new_zeros(part.k, rows.shape[1]).index_add_(0, part.minor_labels, minor)
    sums[part.major] = column_sums - sums.sum(dim=0)
    return sums / part.counts.to(rows.dtype)[:, None]


def kmeans_residual(rows: torch.Tensor, part: Partition) -> torch.Tensor:
    """``W - W F F^T`` in row form for the indicator F: each row minus its cluster's mean (half the gradient of
    the within-cluster sum of squares). The means come from the dominant cluster's complement (few rows)."""
    means = _means(rows, part, rows.sum(dim=0))
    return rows - means.index_select(0, part.assignments)


def add_kmeans_gradient_(grad_rows: torch.Tensor, rows: torch.Tensor, part: Partition, lam: float) -> None:
    """``grad += lam * (W - W F F^T)`` in row form, in place, without materializing the residual."""
    means = _means(rows, part, _column_sums(rows))
    grad_rows.add_(rows, alpha=lam).sub_(means.index_select(0, part.assignments), alpha=lam)


class _WithinClusterSS(torch.autograd.Function):
    """Within-cluster sum of squares with the closed-form gradient ``2 (w_i - m_{a_i})``.

    The cluster means depend on W, but their contribution to the gradient vanishes (the residuals of
    a cluster sum to zero), so the backward pass is one multiply instead of autograd's scatter/gather
    chain.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, part: Partition) -> torch.Tensor:
        residual = kmeans_residual(rows, part)
        if residual.numel() <= SAVE_RESIDUAL_MAX:
            ctx.save_for_backward(residual)
        else:  # a large layer: recompute in backward rather than hold a second copy of the weights until then
            ctx.save_for_backward(rows)
            ctx.part = part
        flat = residual.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (saved,) = ctx.saved_tensors
        if hasattr(ctx, "part"):
            return kmeans_residual(saved, ctx.part).mul_(2.0 * grad), None
        return 2.0 * grad * saved, None


def kmeans_penalty(
    rows: torch.Tensor, assignments: torch.Tensor, k: int, partition: Partition | None = None
) -> torch.Tensor:
    """Exact indicator form: the within-cluster sum of squares for fixed assignments.

    Equal to ||W - W F F^T||^2 with F the normalized indicator matrix, computed without forming F.
    Pass ``partition`` (``Partition.of(assignments, k)``) to reuse the preparation across steps.
    """
    return _WithinClusterSS.apply(rows, partition or Partition.of(assignments, k))
