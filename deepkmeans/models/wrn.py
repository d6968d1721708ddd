"""Wide ResNet-16-4 for CIFAR-10, laid out as in the Deep k-Means reference code.

Pre-activation blocks (BN-ReLU-conv), 3x3 convs with bias, dropout between the two convs of a block and
a 1x1 shortcut conv (with bias) where the shape changes. As in the reference, a stage's stride sits on
the block's second conv and its 1x1 shortcut, and the shortcut reads the block input before BN-ReLU.
Module names match the reference's state-dict keys (``conv1``, ``layer1.0.conv1``,
``layer1.0.shortcut.0``, ..., ``bn1``, ``linear``), so its checkpoints load without renaming and the
16 conv layers enumerate in the order its per-layer K and p lists assume.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class WideBasic(nn.Module):
    """One pre-activation block: BN-ReLU-conv3x3, dropout, BN-ReLU-conv3x3, plus the shortcut (a 1x1 conv
    where the shape changes, or where ``project`` asks for one)."""

    def __init__(self, in_planes: int, planes: int, dropout: float, stride: int = 1, project: bool = False) -> None:
        super().__init__()
        # Registration order fixes named_modules() order: conv1, conv2, then the shortcut conv.
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.shortcut: nn.Module = nn.Identity()
        if project or stride != 1 or in_planes != planes:
            projection = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)
            self.shortcut = nn.Sequential(projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv, three stages of (depth - 4) / 6 blocks (widths 16k, 32k, 64k), BN-ReLU,
    global average pooling and a linear classifier."""

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 4,
        num_classes: int = 10,
        dropout: float = 0.3,
        in_channels: int = 3,
        project_first: bool = False,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=True)
        self.layer1 = _stage(widths[0], widths[1], blocks, dropout, 1, project_first)
        self.layer2 = _stage(widths[1], widths[2], blocks, dropout, 2, project_first)
        self.layer3 = _stage(widths[2], widths[3], blocks, dropout, 2, project_first)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convs and zero biases: the usual WRN initialisation for training from scratch."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _stage(in_planes: int, planes: int, blocks: int, dropout: float, stride: int, project: bool) -> nn.Sequential:
    """A stage of ``blocks`` blocks; only the first changes width and resolution (and has the 1x1 shortcut conv,
    always when ``project``)."""
    layers = [WideBasic(in_planes, planes, dropout, stride, project)]
    layers += [WideBasic(planes, planes, dropout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def conv_layer_names(model: WideResNet) -> list[str]:
    """Names of the conv layers in the order per-layer K/p lists refer to them.

    Stem conv, then per block conv1, conv2 and the 1x1 shortcut where present -- the order in which
    the reference deploy script walks a block, and the module registration order here.
    """
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def wrn16_4(num_classes: int = 10) -> WideResNet:
    """WRN-16-4 with dropout 0.3, the CIFAR-10 model of the Deep k-Means experiments."""
    return WideResNet(depth=16, widen_factor=4, num_classes=num_classes, dropout=0.3)


def wrn16_mnist(widen_factor: int) -> WideResNet:
    """WRN-16-k for 28x28 MNIST (one input channel, no dropout) with WRN-16-4's 16 conv layers: the first block
    of every stage has its 1x1 shortcut conv even where the width does not change (k = 1), so the reference
    presets' per-layer pattern carries over."""
    return WideResNet(depth=16, widen_factor=widen_factor, dropout=0.0, in_channels=1, project_first=True)
