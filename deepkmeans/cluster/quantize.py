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


def cluster_rows(rows: torch.Tensor, k: int, sparsity_p: float = 0.0, *, seed: int = 0) -> RowClustering:
    """Cluster ``rows`` into ``k`` centers exactly as compression does (k-means++, Lloyd, sparsity p).

    Callers decide beforehand whether ``k >= N`` means "leave dense"; here ``k`` is honoured as given.
    """
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"rows must be a non-empty (N, d) matrix, got shape {tuple(rows.shape)}")
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if not 0.0 <= sparsity_p < 1.0:
        raise ValueError(f"sparsity p must be in [0, 1), got {sparsity_p}")
    rows = rows.detach()
    n_sparse = sparse_count(rows.shape[0], sparsity_p) if k > 1 else 0
    if n_sparse == 0:
        result = kmeans(rows, k, seed=seed)
        return RowClustering(result.centers, result.assignments)

    dist = (rows - rows.mean(dim=0, keepdim=True)).pow(2).sum(dim=1)
    # Stable sort so ties resolve by row index and the result is deterministic.
    order = torch.sort(dist, stable=True).indices
    sparse_idx, rest_idx = order[:n_sparse], order[n_sparse:]
    assignments = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    centers = [rows[sparse_idx].mean(dim=0, keepdim=True)]
    if rest_idx.numel() > 0:
        rest = kmeans(rows[rest_idx], k - 1, seed=seed)
        assignments[rest_idx] = rest.assignments + 1
        centers.append(rest.centers)
    return RowClustering(torch.cat(centers).to(rows.dtype), assignments)


def entropy_bits(assignments: torch.Tensor, k: int) -> float:
    """Empirical entropy H (bits per index) of the assignment distribution."""
    counts = torch.bincount(assignments.flatten().cpu(), minlength=k).double()
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * probs.log2()).sum())


def hardness(weight: torch.Tensor, quantized: torch.Tensor) -> float:
    """Relative quantization error ||W - Q(W)||_F / ||W||_F: lower means harder assignments."""
    norm = float(weight.detach().norm())
    return float((weight.detach() - quantized).norm()) / norm if norm > 0 else 0.0
