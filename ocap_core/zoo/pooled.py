"""The head the zoo's plain conv nets share: a ``features`` trunk, global average pooling and one Linear
``classifier`` (the names the registry's ``classifier`` and the pruning rules look for)."""

from typing import List

import torch
import torch.nn as nn


class PooledConvNet(nn.Module):
    """``layers`` as ``features`` (ending in ``width`` channels), then average pool and Linear."""

    def __init__(self, layers: List[nn.Module], width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
