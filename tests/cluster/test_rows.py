"""Default row lengths: the kernel width for convolutions, scalars for depthwise ones and linear layers."""

import torch
from torch import nn

from deepkmeans import CompressConfig, LayerSpec, build_plan, compress, materialize
from deepkmeans.cluster.quantize import hardness
from deepkmeans.cluster.rows import default_row_length
from deepkmeans.tuning import Grid


def test_depthwise_convolutions_default_to_scalars_and_the_rest_to_the_kernel_width() -> None:
    assert default_row_length((32, 1, 3, 3), groups=32) == 1  # depthwise: one input channel per filter
    assert default_row_length((20, 1, 5, 5)) == 5  # LeNet-5's conv1: one input channel, but not grouped
    assert default_row_length((64, 2, 3, 3), groups=32) == 3  # grouped, two input channels per filter
    assert default_row_length((16, 1, 7), groups=16) == 1  # depthwise Conv1d
    assert default_row_length((10, 800)) == 1


def test_the_plan_the_accounting_and_tune_take_the_depthwise_default() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 16, 1))
    plan = build_plan(model, CompressConfig(layers={"0": LayerSpec(K=16)}))
    assert plan["0"].spec.d == 1 and plan["1"].n_rows == 16 * 32  # the dense 1x1 conv keeps rows of 1
    assert Grid().row_lengths((32, 1, 3, 3), groups=32) == [1]
    shared = compress(model, CompressConfig(layers={"0": LayerSpec(K=16)}))
    kernel_rows = compress(model, CompressConfig(layers={"0": LayerSpec(K=16, d=3)}))
    weight = model[0].weight.detach()
    # scalar sharing of a depthwise kernel loses far less than 16 centers of length 3
    errors = [hardness(weight, materialize(m)[0].weight.detach()) for m in (shared, kernel_rows)]
    assert errors[0] < 0.1 < 0.3 < errors[1]
