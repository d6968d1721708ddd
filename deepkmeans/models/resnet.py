"""ResNet-20 for 32x32 (CIFAR-10) or 28x28 (MNIST, Fashion-MNIST) images, as in He et al. 2016, section 4.2.

Post-activation basic blocks (conv3x3-BN-ReLU-conv3x3-BN, add, ReLU), convs without bias, three stages of
three blocks with 16, 32 and 64 channels, global average pooling and a linear classifier: 19 conv layers and
0.27M parameters. Where a stage halves the resolution and doubles the width, the shortcut is the paper's
option A: the input subsampled by 2 and zero-padded to the new width, so every weight sits in a 3x3 conv or
in the classifier.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Shortcut(nn.Module):
    """Option A: take every other pixel and pad the channels with zeros (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity() if stride == 1 else Shortcut(planes - in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n + 2) for small images: stem conv3x3-BN-ReLU, three stages of n blocks, pooling, linear."""

    def __init__(self, blocks: int = 3, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"a ResNet stage needs at least one block, got {blocks}")
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, blocks, 1)
        self.layer2 = _stage(16, 32, blocks, 2)
        self.layer3 = _stage(32, 64, blocks, 2)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-20: three blocks per stage."""
    return ResNet(blocks=3, num_classes=num_classes, in_channels=in_channels)
