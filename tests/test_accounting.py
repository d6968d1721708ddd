"""The paper accounting on models small enough to count by hand: every figure below is worked out in the comments."""

import pytest
import torch
from torch import nn

from deepkmeans import CompressConfig, LayerSpec, account, build_plan, compress, measure
from deepkmeans.data import Batches


def _two_by_two() -> nn.Sequential:
    """Linear(4, 8) whose 16 rows of length 2 are [1, 1] and [-1, -1], eight of each; BatchNorm1d(8); Linear(8, 3)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 1.0, -1.0, -1.0]).repeat(8, 1))
    return model


def test_dense_model_counts_every_parameter_at_its_width_and_normalization_apart() -> None:
    acc = account(_two_by_two())
    # Linear(4, 8): (32 + 8) * 32 bits; Linear(8, 3): (24 + 3) * 32; BatchNorm1d(8): (8 + 8) * 32, reported apart
    assert [la.bits_before for la in acc.layers] == [1280, 864]
    assert acc.bits_before == 2144 and acc.bits_after == 2144 and acc.paper_cr == 1.0
    assert acc.normalization_bits == 512
    # the state dict also holds BatchNorm's running mean / var (float32) and its step count (int64)
    assert acc.dense_bytes == (32 + 8 + 24 + 3 + 4 * 8) * 4 + 8


def test_shared_layer_costs_centers_plus_n_times_h_plus_bias() -> None:
    shared = compress(_two_by_two(), CompressConfig(layers={"0": LayerSpec(K=2, d=2), "2": None}))
    acc = account(shared)
    row = acc.layers[0]
    assert (row.shared, row.n_rows, row.d, row.K) == (True, 16, 2, 2)
    assert row.entropy_bits == pytest.approx(1.0)  # two centers, used eight times each
    # K*d*32 + N*H + bias: 2*2*32 + 16*1 + 8*32
    assert row.bits_before == 1280 and row.bits_after == pytest.approx(400)
    assert acc.layers[1].bits_after == 864  # the layer the config left dense
    assert acc.paper_cr == pytest.approx(2144 / 1264)


@pytest.mark.parametrize(("bits", "after"), [(16, 2 * 2 * 16 + 16 + 8 * 16), (8, 2 * 2 * 8 + 64 + 16 + 8 * 8 + 64)])
def test_narrow_centers_and_bias_count_at_their_width_plus_each_grid(bits: int, after: int) -> None:
    # 8 bits: each 8-bit grid (centers, bias) adds its offset and scale, two float32 numbers
    shared = compress(_two_by_two(), CompressConfig(layers={"0": LayerSpec(K=2, d=2, bits=bits), "2": None}))
    assert account(shared).layers[0].bits_after == pytest.approx(after)


def test_half_precision_weights_count_16_bits() -> None:
    model = _two_by_two().half()
    assert [la.bits_before for la in account(model).layers] == [(32 + 8) * 16, (24 + 3) * 16]
    assert account(model).dense_bytes == (32 + 8 + 24 + 3 + 4 * 8) * 2 + 8


class _Tied(nn.Module):
    """Two linear layers holding one weight (each its own bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_tied_weight_counts_once_dense_and_shared() -> None:
    model = _Tied()
    acc = account(model)
    # the weight once (32 * 32) and both biases (2 * 8 * 32)
    assert acc.bits_before == 1024 + 512 and [la.bits_before for la in acc.layers] == [1024 + 256, 256]
    assert acc.dense_bytes == (32 + 16) * 4
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([1.0, 1.0, -1.0, -1.0]).repeat(8, 1))
    shared = account(compress(model, CompressConfig(layers={"a": LayerSpec(K=2, d=2)})))
    assert shared.bits_before == 1024 + 512
    assert shared.bits_after == pytest.approx(2 * 2 * 32 + 16 + 512)  # centers and indexes once, both biases


def test_k_not_below_the_row_count_leaves_the_layer_dense() -> None:
    model = _two_by_two()
    config = CompressConfig(layers={"0": LayerSpec(K=16, d=2), "2": None})  # 16 rows of length 2: nothing to save
    plan = build_plan(model, config)
    assert plan.shared == {} and "K=16 >= its 16 rows" in plan["0"].why_dense
    with pytest.warns(UserWarning, match="left dense: K=16"):
        acc = account(compress(model, config))
    assert not acc.layers[0].shared and acc.paper_cr == 1.0
    assert build_plan(model, CompressConfig(layers={"0": LayerSpec(K=15, d=2), "2": None})).shared


def test_measure_reports_validation_on_validation_batches_and_test_on_test_batches() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))  # always class 0
    x = torch.randn(8, 2)
    test = Batches(x, torch.zeros(8, dtype=torch.long), 4, False)
    val = Batches(x, torch.ones(8, dtype=torch.long), 4, False)
    m = measure(model, test, torch.device("cpu"), val=val)
    assert (m.test_acc, m.val_acc) == (1.0, 0.0)
