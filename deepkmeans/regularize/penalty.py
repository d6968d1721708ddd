"""The two forms of the k-means penalty R(W, F) = ||W - W F F^T||_F^2 on one layer's rows.

Rows are the ``N`` columns of ``W in R^{d x N}`` (each a filter row of length d). F is held fixed
between refreshes; these functions evaluate R and let autograd supply ``2 (W - W F F^T)``.
"""

from __future__ import annotations

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


class _WithinClusterSS(torch.autograd.Function):
    """Within-cluster sum of squares with the closed-form gradient ``2 (w_i - m_{a_i})``.

    The cluster means depend on W, but their contribution to the gradient vanishes (the residuals of
    a cluster sum to zero), so the backward pass is one multiply instead of autograd's scatter/gather
    chain -- this keeps the penalty cheap next to the training step.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, assignments: torch.Tensor, k: int) -> torch.Tensor:  # noqa: ANN001
        residual = rows - cluster_means(rows, assignments, k)[assignments]
        ctx.save_for_backward(residual)
        return residual.pow(2).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        (residual,) = ctx.saved_tensors
        return 2.0 * grad * residual, None, None


def kmeans_penalty(rows: torch.Tensor, assignments: torch.Tensor, k: int) -> torch.Tensor:
    """Exact indicator form: the within-cluster sum of squares for fixed assignments.

    Equal to ||W - W F F^T||^2 with F the normalized indicator matrix, computed without forming F.
    """
    return _WithinClusterSS.apply(rows, assignments, k)
