"""Shared layers at run time: K centers + narrow indexes rebuild exactly the weight-shared layer."""

import copy

import pytest
import torch
from torch import nn

from deepkmeans import CompressConfig, LayerSpec, compress, materialize, shared_layers
from deepkmeans.cluster.rows import from_rows
from deepkmeans.shared import index_dtype, share_

LAYERS = [
    (nn.Conv1d(3, 4, 5), (2, 3, 11)),
    (nn.Conv2d(3, 4, 3), (2, 3, 7, 7)),
    (nn.Conv3d(2, 3, 3), (2, 2, 5, 5, 5)),
    (nn.ConvTranspose1d(3, 4, 3), (2, 3, 6)),
    (nn.ConvTranspose2d(3, 4, 3, stride=2), (2, 3, 5, 5)),
    (nn.ConvTranspose3d(2, 3, 3), (2, 2, 4, 4, 4)),
    (nn.Linear(12, 6), (2, 12)),
]


@pytest.mark.parametrize("layer,shape", LAYERS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_compact_layer_equals_materialized(layer: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    compact = compress(model, CompressConfig(layers={"0": LayerSpec(K=3, p=0.3)}))
    (shared,) = shared_layers(compact).values()
    assert shared.assignments.dtype == torch.uint8 and shared.centers.shape[0] == 3
    dense = materialize(compact)
    assert not shared_layers(dense) and shared_layers(compact)  # materialize made a copy
    x = torch.randn(*shape)
    assert torch.equal(compact(x), dense(x))
    assert len(torch.unique(dense[0].weight.reshape(-1, shared.param.d), dim=0)) <= 3


def test_embedding_and_tied_output_projection_share_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(40, 8)
            self.out = nn.Linear(8, 40)
            self.out.weight = self.emb.weight

        def forward(self, i: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(i))

    torch.manual_seed(0)
    compact = compress(Tied(), CompressConfig(layers={"*": LayerSpec(K=4, d=2)}))
    layers = shared_layers(compact)
    assert list(layers) == ["emb"] and layers["emb"].tied == ("out",)
    assert compact.emb.weight.data_ptr() != 0 and torch.equal(compact.emb.weight, compact.out.weight)
    i = torch.randint(0, 40, (3, 5))
    dense = materialize(compact)
    assert dense.emb.weight is dense.out.weight and torch.equal(dense(i), compact(i))
    opt = torch.optim.SGD(compact.parameters(), lr=0.1)
    compact(i).sum().backward()
    opt.step()
    assert torch.equal(compact.emb.weight, compact.out.weight)  # one set of centers trains both


def test_center_gradient_is_summed_per_cluster() -> None:
    torch.manual_seed(0)
    compact = compress(nn.Sequential(nn.Linear(6, 4)), CompressConfig(layers={"0": LayerSpec(K=3, d=2)}))
    x = torch.randn(5, 6)
    compact(x).pow(2).sum().backward()
    (layer,) = shared_layers(compact).values()
    dense = materialize(compact)
    dense(x).pow(2).sum().backward()
    rows_grad = dense[0].weight.grad.reshape(-1, 2)
    expected = torch.zeros(3, 2).index_add_(0, layer.assignments.long(), rows_grad)
    torch.testing.assert_close(layer.centers.grad, expected)
    assert layer.assignments.grad is None


def test_state_dict_roundtrip_and_deepcopy_materialize_keep_the_original() -> None:
    torch.manual_seed(0)
    config = CompressConfig(layers={"*": LayerSpec(K=5)})
    a = compress(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3)), config)
    b = compress(
        nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3)), CompressConfig(layers={"*": LayerSpec(K=5)}, seed=9)
    )
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 2, 8, 8)
    assert torch.equal(a(x), b(x))
    materialize(copy.deepcopy(a), inplace=True)
    assert torch.equal(a(x), b(x)) and len(shared_layers(a)) == 2  # the original is untouched


def test_index_dtype_is_the_narrowest() -> None:
    assert [index_dtype(k) for k in (1, 256, 257, 32768, 32769)] == [
        torch.uint8,
        torch.uint8,
        torch.int16,
        torch.int16,
        torch.int32,
    ]
    layer = nn.Linear(300, 4)
    share_(layer, torch.randn(300, 1), torch.arange(1200) % 300)
    assert layer.parametrizations.weight[0].assignments.dtype == torch.int16


def test_assigning_a_weight_sets_each_center_to_its_cluster_mean_row() -> None:
    """``layer.weight = w`` goes through ``SharedWeight.right_inverse``: the centers closest to ``w`` with the
    assignments fixed. A weight the layer can represent comes back exactly; an empty cluster's center is zero."""
    layer = nn.Linear(4, 3)  # weight (3, 4): six rows of d = 2
    assignments = torch.tensor([0, 0, 1, 1, 0, 1])  # cluster 2 holds no row
    share_(layer, torch.zeros(3, 2), assignments)
    (shared,) = shared_layers(nn.Sequential(layer)).values()
    centers = shared.centers

    representable = from_rows(torch.tensor([[1.0, 2.0], [3.0, -4.0]])[assignments], (3, 4))
    layer.weight = representable
    assert shared_layers(nn.Sequential(layer))["0"].centers is centers  # the optimizer's Parameter, updated
    assert torch.equal(centers, torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.0, 0.0]]))
    assert torch.equal(layer.weight, representable)

    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [20.0, 2.0], [5.0, 6.0], [0.0, -2.0]])
    layer.weight = from_rows(rows, (3, 4))
    # cluster 0: rows 0, 1, 4 -> ((1 + 3 + 5) / 3, (2 + 4 + 6) / 3); cluster 1: rows 2, 3, 5 -> (30 / 3, 0 / 3)
    assert torch.equal(centers, torch.tensor([[3.0, 4.0], [10.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(shared.assignments, assignments.to(torch.uint8))
