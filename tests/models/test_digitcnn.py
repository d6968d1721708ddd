"""DigitCNN: the shape, parameter count and module names of the third-party network it loads."""

from __future__ import annotations

import torch

from deepkmeans.models import build_model


def test_layout_is_the_published_networks() -> None:
    model = build_model("digit_cnn")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {  # ccexam 1.0.0's MNISTNet state dict, key for key
        "features.0.weight": (32, 1, 3, 3),
        "features.0.bias": (32,),
        "features.3.weight": (64, 32, 3, 3),
        "features.3.bias": (64,),
        "classifier.0.weight": (128, 3136),
        "classifier.0.bias": (128,),
        "classifier.2.weight": (10, 128),
        "classifier.2.bias": (10,),
    }
    assert sum(p.numel() for p in model.parameters()) == 421_642
    with torch.no_grad():
        assert model.eval()(torch.randn(3, 1, 28, 28)).shape == (3, 10)
