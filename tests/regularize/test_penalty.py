import pytest
import torch

from deepkmeans.regularize import penalty
from deepkmeans.regularize.penalty import cluster_means, kmeans_penalty, spectral_basis, spectral_penalty


def _indicator(assignments: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's normalized indicator F (N x K), F_ik = 1/sqrt(n_k)."""
    f = torch.zeros(len(assignments), k, dtype=torch.float64)
    counts = torch.bincount(assignments, minlength=k).double()
    f[torch.arange(len(assignments)), assignments] = 1 / counts[assignments].sqrt()
    return f


def test_kmeans_penalty_is_within_cluster_ss_hand_example() -> None:
    # rows (d=1): {0, 2} in cluster 0 (mean 1), {10} in cluster 1: WCSS = 1 + 1 + 0 = 2
    rows = torch.tensor([[0.0], [2.0], [10.0]], dtype=torch.float64)
    a = torch.tensor([0, 0, 1])
    assert float(kmeans_penalty(rows, a, 2)) == pytest.approx(2.0)
    # d=2: cluster 0 = (0,0),(2,2) mean (1,1): 2+2; cluster 1 = (5,5) alone: 0
    rows2 = torch.tensor([[0.0, 0.0], [2.0, 2.0], [5.0, 5.0]], dtype=torch.float64)
    assert float(kmeans_penalty(rows2, a, 2)) == pytest.approx(4.0)


def test_kmeans_penalty_equals_trace_form_with_indicator_f() -> None:
    torch.manual_seed(0)
    rows = torch.randn(40, 3, dtype=torch.float64)
    a = torch.randint(0, 5, (40,))
    f = _indicator(a, 5)
    torch.testing.assert_close(f.T @ f, torch.eye(5, dtype=torch.float64))
    w = rows.T
    trace_form = torch.trace(w.T @ w) - torch.trace(f.T @ w.T @ w @ f)
    torch.testing.assert_close(kmeans_penalty(rows, a, 5), trace_form)
    torch.testing.assert_close(cluster_means(rows, a, 5)[a], (w @ f @ f.T).T)


def test_gradient_matches_paper_formula_and_finite_differences() -> None:
    torch.manual_seed(1)
    rows = torch.randn(30, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randint(0, 4, (30,))
    kmeans_penalty(rows, a, 4).backward()
    w = rows.detach().T
    f = _indicator(a, 4)
    paper = 2 * (w - w @ f @ f.T)  # d/dW ||W - W F F^T||^2 (the paper writes lambda * (...) for lambda/2 * R)
    torch.testing.assert_close(rows.grad, paper.T)
    assert torch.autograd.gradcheck(lambda r: kmeans_penalty(r, a, 4), (rows.detach().clone().requires_grad_(),))


def test_spectral_zero_for_k_ge_d_and_positive_below() -> None:
    torch.manual_seed(2)
    rows = torch.randn(500, 3, dtype=torch.float64)
    for k in (3, 5, 64):
        assert float(spectral_penalty(rows, spectral_basis(rows, k))) == pytest.approx(0.0, abs=1e-8)
    for k in (1, 2):
        f = spectral_basis(rows, k)
        torch.testing.assert_close(f.T @ f, torch.eye(k, dtype=torch.float64))  # orthonormal F
        pen = float(spectral_penalty(rows, f))
        sv = torch.linalg.svdvals(rows.T)
        assert pen > 0
        assert pen == pytest.approx(float((sv[k:] ** 2).sum()))  # Eckart-Young: the optimum of the relaxation


def test_spectral_gradient_finite_differences() -> None:
    torch.manual_seed(3)
    rows = torch.randn(20, 4, dtype=torch.float64)
    f = spectral_basis(rows, 2)
    assert torch.autograd.gradcheck(lambda r: spectral_penalty(r, f), (rows.clone().requires_grad_(),))


def test_large_layers_recompute_the_residual_in_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SAVE_RESIDUAL_MAX weights the backward recomputes W - W F F^T instead of keeping it: same gradient."""
    torch.manual_seed(3)
    rows = torch.randn(50, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randint(0, 4, (50,))
    kmeans_penalty(rows, a, 4).backward()
    saved = rows.grad.clone()
    rows.grad = None
    monkeypatch.setattr(penalty, "SAVE_RESIDUAL_MAX", 10)
    kmeans_penalty(rows, a, 4).backward()
    torch.testing.assert_close(rows.grad, saved, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda r: kmeans_penalty(r, a, 4), (rows.detach().clone().requires_grad_(),))


def test_gradient_added_in_place_is_lam_times_residual() -> None:
    torch.manual_seed(4)
    rows = torch.randn(5000, 3)
    a = torch.randint(0, 6, (5000,))
    grad = torch.randn(5000, 3)
    expected = grad + 0.3 * (rows - cluster_means(rows, a, 6)[a])
    penalty.add_kmeans_gradient_(grad, rows, penalty.Partition.of(a, 6), 0.3)
    torch.testing.assert_close(grad, expected)
