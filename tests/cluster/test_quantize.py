import math

import pytest
import torch

from deepkmeans.cluster.quantize import _split_sparse, cluster_rows, entropy_bits, hardness, refine_rows, sparse_count


def test_entropy_hand_computed() -> None:
    # counts 4, 2, 1, 1 of 8: H = 0.5*1 + 0.25*2 + 2 * 0.125*3 = 1.75 bits
    a = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    assert entropy_bits(a, 4) == pytest.approx(1.75)
    assert entropy_bits(torch.zeros(5, dtype=torch.int64), 3) == 0.0


def test_sparsity_p_selects_rows_closest_to_mean() -> None:
    torch.manual_seed(0)
    rows = torch.randn(200, 3)
    mean = rows.mean(0)
    result = cluster_rows(rows, 5, 0.6, seed=1)
    n_sparse = sparse_count(200, 0.6)
    assert n_sparse == 120
    in_sparse = result.assignments == 0
    assert int(in_sparse.sum()) == 120
    dist = (rows - mean).pow(2).sum(1)
    # every sparse row is at least as close to the mean as every other row
    assert float(dist[in_sparse].max()) <= float(dist[~in_sparse].min())
    torch.testing.assert_close(result.centers[0], rows[in_sparse].mean(0))
    # the rest use exactly K-1 = 4 centers
    assert set(result.assignments[~in_sparse].tolist()) <= {1, 2, 3, 4}


def test_p_zero_is_plain_kmeans_and_k1_is_mean() -> None:
    rows = torch.randn(50, 2)
    one = cluster_rows(rows, 1, 0.5)
    torch.testing.assert_close(one.centers[0], rows.mean(0))
    assert one.assignments.unique().tolist() == [0]
    plain = cluster_rows(rows, 4, 0.0, seed=3)
    assert plain.centers.shape == (4, 2)
    assert 0 < hardness(rows, plain.reconstruct()) < 1


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_p(p: float) -> None:
    with pytest.raises(ValueError, match="sparsity p"):
        cluster_rows(torch.randn(10, 2), 3, p)


def test_sparse_count_rounds() -> None:
    assert sparse_count(10, 0.25) == 3  # 2.5 rounds half up
    assert sparse_count(7, 0.0) == 0
    assert sparse_count(1000, 0.9) == math.floor(900.5)


def _wcss(rows: torch.Tensor, assignments: torch.Tensor) -> float:
    from deepkmeans.regularize.penalty import kmeans_penalty

    return float(kmeans_penalty(rows, assignments, int(assignments.max()) + 1))


def test_refine_rows_is_warm_started_lloyd() -> None:
    torch.manual_seed(0)
    blobs = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    truth = torch.arange(300) % 3
    rows = blobs[truth] + 0.3 * torch.randn(300, 2)
    noisy = truth.clone()
    noisy[::7] = (noisy[::7] + 1) % 3  # a stale clustering: one row in seven in the wrong cluster
    refined = refine_rows(rows, noisy, 3)
    assert torch.equal(refined.assignments, truth)
    assert _wcss(rows, refined.assignments) < _wcss(rows, noisy)
    torch.testing.assert_close(refined.centers, torch.stack([rows[truth == j].mean(0) for j in range(3)]))


def test_refine_rows_reapplies_sparsity_p() -> None:
    torch.manual_seed(1)
    rows = torch.randn(100, 3)
    first = cluster_rows(rows, 5, 0.5, seed=0)
    moved = rows + 0.01 * torch.randn(100, 3)
    refined = refine_rows(moved, first.assignments, 5, 0.5)
    dist = (moved - moved.mean(0)).pow(2).sum(1)
    sparse = refined.assignments == 0
    assert int(sparse.sum()) == 50
    assert float(dist[sparse].max()) <= float(dist[~sparse].min())
    assert set(refined.assignments[~sparse].tolist()) <= {1, 2, 3, 4}


@pytest.mark.parametrize("p", [0.3, 0.5, 0.92])
def test_unordered_sparse_split_selects_the_same_rows(p: float) -> None:
    """The linear-time split (used by re-training's refresh) picks the same sparse set, ties to the lower index,
    and the rest in the same order as the sorting split."""
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(-3, 4, (500, 2), generator=gen).float()  # many exact ties in distance
    sparse, rest = _split_sparse(rows, 8, p)
    sparse_set, rest_ordered = _split_sparse(rows, 8, p, sparse_in_order=False)
    assert torch.equal(torch.sort(sparse).values, sparse_set) and torch.equal(rest, rest_ordered)


def test_fast_path_clusters_the_rows_outside_the_dominant_cluster() -> None:
    """With sparsity p the fast path sees exactly the rows the exact path would (the dominant cluster is split
    off first), and its k - 1 centers follow the zero center."""
    from deepkmeans.cluster.kmeans import kmeans

    rows = torch.randn(12_000, 3, generator=torch.Generator().manual_seed(4))
    sparse_idx, rest_idx = _split_sparse(rows, 5, 0.4)
    fast = cluster_rows(rows, 5, 0.4, seed=2, fast=True)
    expected = kmeans(rows[rest_idx], 4, seed=2, fast=True)
    assert not torch.equal(expected.assignments, kmeans(rows[rest_idx], 4, seed=2).assignments)
    assert torch.equal(fast.assignments[rest_idx], expected.assignments + 1)
    assert torch.equal(fast.assignments[sparse_idx], torch.zeros(sparse_idx.numel(), dtype=torch.int64))
    assert torch.equal(fast.centers[1:], expected.centers)
