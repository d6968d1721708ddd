"""LeNet models for MNIST, as used in the compression literature."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, maxpool, conv 50@5x5, maxpool, FC 800-500, ReLU, FC 500-10.

    431k weights, ~93% of them in ``fc1`` -- the layer that decides the compression ratio.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class LeNet300100(nn.Module):
    """Fully connected LeNet-300-100 (784-300-100-10, ReLU)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)
