import pytest
import torch

from deepkmeans.cluster.quantize import cluster_rows, entropy_bits, refine_rate_distortion


def _rows() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(3000, 3, generator=gen) * torch.tensor([1.0, 0.5, 0.2])


def _objective(rows: torch.Tensor, result, beta: float) -> float:
    """sum ||x - c||^2 / s + beta * N * H, with s the mean squared deviation from the mean row."""
    spread = float((rows - rows.mean(0)).pow(2).sum(1).mean())
    error = float((rows - result.reconstruct()).pow(2).sum())
    return error / spread + beta * rows.shape[0] * entropy_bits(result.assignments, result.centers.shape[0])


def test_rate_aware_assignment_lowers_index_entropy_at_fixed_k() -> None:
    rows = _rows()
    plain = cluster_rows(rows, 16, seed=0)
    rate = cluster_rows(rows, 16, seed=0, beta=0.1)
    h_plain = entropy_bits(plain.assignments, 16)
    h_rate = entropy_bits(rate.assignments, rate.centers.shape[0])
    assert h_rate < h_plain - 0.5  # measured: 3.90 -> 2.82 bits per index
    # it trades error for bits: the rate-distortion objective it minimizes is lower than plain k-means'
    assert _objective(rows, rate, 0.1) < _objective(rows, plain, 0.1)
    assert rate.centers.shape[0] <= 16


def test_beta_zero_without_importance_is_plain_clustering() -> None:
    rows = _rows()
    plain = cluster_rows(rows, 8, 0.5, seed=1)
    again = cluster_rows(rows, 8, 0.5, seed=1, beta=0.0)
    assert torch.equal(plain.assignments, again.assignments) and torch.equal(plain.centers, again.centers)


def test_empty_clusters_are_dropped_and_indexes_stay_dense() -> None:
    rows = _rows()
    result = cluster_rows(rows, 32, seed=0, beta=5.0)  # a rate this high empties most clusters
    k = result.centers.shape[0]
    assert k < 32
    assert torch.bincount(result.assignments, minlength=k).min() > 0
    assert int(result.assignments.max()) == k - 1


def test_importance_weights_the_error_where_it_matters() -> None:
    rows = _rows()
    importance = torch.ones_like(rows)
    importance[:, 2] = 100.0  # the third weight of every row matters most
    plain = cluster_rows(rows, 8, seed=0)
    weighted = cluster_rows(rows, 8, seed=0, importance=importance)

    def weighted_error(result) -> float:
        return float((importance * (rows - result.reconstruct()) ** 2).sum())

    assert weighted_error(weighted) < 0.8 * weighted_error(plain)


def test_frozen_rows_keep_the_dominant_cluster() -> None:
    rows = _rows()
    importance = torch.rand(rows.shape, generator=torch.Generator().manual_seed(1))
    plain = cluster_rows(rows, 8, 0.7, seed=0)
    weighted = cluster_rows(rows, 8, 0.7, seed=0, importance=importance)
    # sparsity p without a rate term: the same rows form the dominant cluster, whose center is their weighted mean
    assert torch.equal(plain.assignments == 0, weighted.assignments == 0)
    dominant = weighted.assignments == 0
    w = importance[dominant] + 1e-3 * importance.mean()
    expected = (w * rows[dominant]).sum(0) / w.sum(0)
    torch.testing.assert_close(weighted.centers[0], expected, rtol=1e-4, atol=1e-5)


def test_refine_never_raises_the_objective() -> None:
    rows = _rows()
    start = cluster_rows(rows, 12, seed=3)
    for beta in (0.05, 0.5):
        refined = refine_rate_distortion(rows, start.assignments, 12, beta)
        assert _objective(rows, refined, beta) <= _objective(rows, start, beta) + 1e-6
    with pytest.raises(RuntimeError):
        refine_rate_distortion(rows, start.assignments, 12, 0.1, torch.ones(5))
