"""Scalar k-means helpers: distinct values with multiplicities, nearest center with ties, exact optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepkmeans.cluster import kmeans1d
from deepkmeans.cluster.kmeans import kmeans


def test_distinct_rebuilds_the_input() -> None:
    x = np.array([3.0, -1.0, 3.0, 0.5, -1.0, 3.0])
    values, inverse, counts = kmeans1d.distinct(x)
    assert values.tolist() == [-1.0, 0.5, 3.0]
    assert counts.tolist() == [2, 1, 3]
    assert np.array_equal(values[inverse], x)


def test_nearest_ties_go_to_the_lowest_index() -> None:
    values = np.array([0.0, 2.0, -2.0])
    centers = np.array([1.0, -1.0, 1.0])
    assert kmeans1d.nearest(values, centers).tolist() == [0, 0, 1]


def test_optimal_centers_split_separated_groups() -> None:
    values, _, counts = kmeans1d.distinct(np.array([0.0, 0.1, 0.2, 5.0, 5.2, 9.0, 9.0, 9.3]))
    centers = kmeans1d.optimal_centers(values, counts, 3)
    assert np.allclose(centers, [0.1, 5.1, 9.1])


def test_near_optimal_centers_match_the_optimum_on_separated_groups() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(mean, 0.01, 500) for mean in (-3.0, 0.0, 2.0, 7.0)])
    values, _, counts = kmeans1d.distinct(x)
    exact = kmeans1d.optimal_centers(values, counts, 4)
    near = kmeans1d.near_optimal_centers(values, counts, 4, max_iter=100, tol=1e-9)
    assert np.allclose(near, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_dense_and_monotone_programs_agree(seed: int) -> None:
    # Small problems use the dense min-plus program, large ones divide and conquer: same optimum.
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, 300) if seed % 2 else rng.integers(0, 120, 300) / 7.0  # tails; repeated values
    values, _, counts = kmeans1d.distinct(x)
    pw, p1, p2 = kmeans1d._prefix_sums(values - values.mean(), counts)
    for k in (2, 7, 30):
        dense = kmeans1d._dp_bounds_dense(pw, p1, p2, k)
        monotone = kmeans1d._dp_bounds_monotone(pw, p1, p2, k)
        assert np.array_equal(dense, monotone)


def test_many_scalar_centers_skip_the_quadratic_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """1-D k-means with K above the coarse program's bound starts from density^(1/3) quantiles: its cost no
    longer grows like K^2, and it still beats an evenly spaced start by far."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(20_000, 1, generator=gen) * 0.05
    k = kmeans1d.COARSE_DP_MAX_K + 44
    monkeypatch.setattr(kmeans1d, "_dp_bounds", lambda *a: pytest.fail("coarse program used for large K"))
    result = kmeans(rows, k)
    assert result.centers.shape == (k, 1) and len(torch.unique(result.assignments)) == k
    even = torch.linspace(float(rows.min()), float(rows.max()), k)[:, None]
    even_inertia = float((rows - even[(rows - even.T).abs().argmin(1)]).square().sum())
    assert result.inertia < 0.5 * even_inertia
