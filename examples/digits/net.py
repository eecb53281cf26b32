"""A user's own small digit classifier, written without BatchNorm (as many hand-made nets are)."""

import torch
import torch.nn as nn


class DigitNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))          # 16 -> 8
        x = torch.relu(self.conv3(x))
        x = self.pool(torch.relu(self.conv4(x)))          # 8 -> 4
        return self.head(x.mean((2, 3)))
