"""A small digit CNN in the layout of a network trained and published by a third party.

Two conv3x3-ReLU-maxpool blocks (1 -> 32 -> 64 channels, with biases) and a 3136 -> 128 -> 10 classifier:
421,642 parameters, 95% of them in the first linear layer. The module names (``features.0``, ``features.3``,
``classifier.0``, ``classifier.2``) are those of ``MNISTNet`` in the MIT-licensed ``ccexam`` package, so the
state dict it ships loads as is (:mod:`deepkmeans.weights`).
"""

from __future__ import annotations

from torch import nn


class DigitCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = size // 4
        self.classifier = nn.Sequential(nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
