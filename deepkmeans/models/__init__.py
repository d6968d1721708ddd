"""Model zoo: the architectures the tool can rebuild from a compressed file by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from deepkmeans.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """How to build a named model and what input it takes (for the energy model and smoke runs)."""

    factory: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    dataset: str


def _lenet5() -> nn.Module:
    from deepkmeans.models.lenet import LeNet5Caffe

    return LeNet5Caffe()


def _lenet300() -> nn.Module:
    from deepkmeans.models.lenet import LeNet300100

    return LeNet300100()


def _wrn16_4() -> nn.Module:
    from deepkmeans.models.wrn import wrn16_4

    return wrn16_4()


def _wrn16_mnist(k: int) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        from deepkmeans.models.wrn import wrn16_mnist

        return wrn16_mnist(k)

    return factory


def _resnet20(in_channels: int) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        from deepkmeans.models.resnet import resnet20

        return resnet20(in_channels)

    return factory


def _digit_cnn() -> nn.Module:
    from deepkmeans.models.digitcnn import DigitCNN

    return DigitCNN()


MODELS: dict[str, ModelInfo] = {
    "lenet5_caffe": ModelInfo(_lenet5, (1, 28, 28), "mnist"),
    "lenet300_100": ModelInfo(_lenet300, (1, 28, 28), "mnist"),
    "wrn16_4": ModelInfo(_wrn16_4, (3, 32, 32), "cifar10"),
    "wrn16_1_mnist": ModelInfo(_wrn16_mnist(1), (1, 28, 28), "mnist"),
    "wrn16_2_mnist": ModelInfo(_wrn16_mnist(2), (1, 28, 28), "mnist"),
    "resnet20": ModelInfo(_resnet20(3), (3, 32, 32), "cifar10"),
    "resnet20_mnist": ModelInfo(_resnet20(1), (1, 28, 28), "mnist"),
    "digit_cnn": ModelInfo(_digit_cnn, (1, 28, 28), "mnist"),
}


def model_info(name: str) -> ModelInfo:
    """Look a model up by name, with the list of known names in the error."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def build_model(name: str) -> nn.Module:
    """Instantiate a fresh (untrained) model by name."""
    return model_info(name).factory()
