"""The two forms of the k-means penalty R(W, F) = ||W - W F F^T||_F^2 on one layer's rows.

Rows are the ``N`` columns of ``W in R^{d x N}`` (each a filter row of length d). F is held fixed
between refreshes; these functions evaluate R and let autograd supply ``2 (W - W F F^T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    w = rows.T  # (d, N)
    return (w - (w @ basis) @ basis.T).pow(2).sum()


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

    @classmethod
    def of(cls, assignments: torch.Tensor, k: int) -> Partition:
        counts = torch.bincount(assignments, minlength=k)
        major = int(torch.argmax(counts))
        minor_idx = torch.nonzero(assignments != major).flatten()
        return cls(k, major, minor_idx, assignments[minor_idx], counts.clamp_min(1))


class _WithinClusterSS(torch.autograd.Function):
    """Within-cluster sum of squares with the closed-form gradient ``2 (w_i - m_{a_i})``.

    The cluster means depend on W, but their contribution to the gradient vanishes (the residuals of
    a cluster sum to zero), so the backward pass is one multiply instead of autograd's scatter/gather
    chain.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, part: Partition) -> torch.Tensor:  # noqa: ANN001
        minor = rows.index_select(0, part.minor_idx)
        sums = rows.new_zeros(part.k, rows.shape[1]).index_add_(0, part.minor_labels, minor)
        sums[part.major] = rows.sum(dim=0) - sums.sum(dim=0)
        means = sums / part.counts.to(rows.dtype)[:, None]
        residual = rows - means[part.major]
        residual.index_copy_(0, part.minor_idx, minor - means[part.minor_labels])
        ctx.save_for_backward(residual)
        flat = residual.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (residual,) = ctx.saved_tensors
        return 2.0 * grad * residual, None


def kmeans_penalty(
    rows: torch.Tensor, assignments: torch.Tensor, k: int, partition: Partition | None = None
) -> torch.Tensor:
    """Exact indicator form: the within-cluster sum of squares for fixed assignments.

    Equal to ||W - W F F^T||^2 with F the normalized indicator matrix, computed without forming F.
    Pass ``partition`` (``Partition.of(assignments, k)``) to reuse the preparation across steps.
    """
    return _WithinClusterSS.apply(rows, partition or Partition.of(assignments, k))
