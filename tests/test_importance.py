"""Data-aware k-means: squared gradients as importance, and the clustering they weight."""

import torch
from torch import nn

from deepkmeans import CompressConfig, LayerSpec, compress
from deepkmeans.data import Batches
from deepkmeans.importance import GROUP, squared_gradients
from deepkmeans.shared import shared_layers


def _setup() -> tuple[nn.Module, Batches]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 12)
    x[:, 6:] = 0.0  # half the inputs never carry a signal: their weights cannot matter to the loss
    return model, Batches(x, torch.randint(0, 3, (64,)), 32, False)


def test_squared_gradients_sum_per_group_and_leave_the_model_as_it_was() -> None:
    model, batches = _setup()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imp = squared_gradients(model, batches, torch.device("cpu"), ["0"], max_batches=1)
    expected = torch.zeros(16, 12)
    x, y = batches.x[:32], batches.y[:32]
    for start in range(0, 32, GROUP):  # by hand: one gradient per group of GROUP images, squared, summed
        model.zero_grad()
        nn.functional.cross_entropy(
            model(x[start : start + GROUP]), y[start : start + GROUP], reduction="sum"
        ).backward()
        expected += model[0].weight.grad ** 2
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(imp["0"], expected)
    assert float(imp["0"][:, 6:].abs().max()) == 0.0 and float(imp["0"][:, :6].sum()) > 0
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model[0].weight.grad is None


def test_importance_changes_the_clustering_towards_the_weights_that_matter() -> None:
    model, batches = _setup()
    imp = squared_gradients(model, batches, torch.device("cpu"), ["0"], max_batches=2)
    config = CompressConfig(layers={"0": LayerSpec(K=4, d=6)})
    plain = compress(model, config)
    aware = compress(model, config, importance=imp)

    def weighted_error(shared: nn.Module) -> float:
        return float((imp["0"] * (shared[0].weight - model[0].weight) ** 2).sum())

    assert weighted_error(aware) < 0.9 * weighted_error(plain)
    assert shared_layers(aware)["0"].centers.shape == (4, 6)
