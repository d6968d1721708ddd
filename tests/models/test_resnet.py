"""ResNet-20: output shape, the published parameter count, option-A shortcuts and a compressed round trip."""

from __future__ import annotations

import torch
from torch import nn

from deepkmeans import compress, load, save
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.models import build_model
from deepkmeans.models.resnet import Shortcut, resnet20


def test_forward_on_cifar_and_mnist_shapes() -> None:
    torch.manual_seed(0)
    for model, shape in ((resnet20(3), (2, 3, 32, 32)), (resnet20(1), (2, 1, 28, 28))):
        with torch.no_grad():
            assert model.eval()(torch.randn(shape)).shape == (2, 10)


def test_parameter_count_is_the_published_one() -> None:
    model = resnet20(3)
    # 269,722 (0.27M in He et al. 2016, table 6): 19 bias-free convs, their BatchNorms and the classifier
    assert sum(p.numel() for p in model.parameters()) == 269_722
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19
    assert all(m.kernel_size == (3, 3) and m.bias is None for m in convs)


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    out = Shortcut(4)(x)
    assert out.shape == (2, 8, 2, 2)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert not out[:, :2].any() and not out[:, 6:].any()


def test_a_compressed_resnet20_reads_back_by_name(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20_mnist").eval()
    shared = compress(model, CompressConfig(layers={"type:Conv2d": LayerSpec(K=8, p=0.5)}))
    path = tmp_path / "r20.dkm"
    save(shared, path, name="resnet20_mnist")
    back = load(path)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(back.eval()(x), shared.eval()(x), atol=1e-5)
