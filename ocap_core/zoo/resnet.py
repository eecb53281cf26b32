"""CIFAR-style residual networks (He et al. 2016, §4.2 layout) with BasicBlocks."""

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; a 1x1 conv + BN shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, three stages of ``blocks`` BasicBlocks (strides 1, 2, 2), global pool, Linear."""

    def __init__(self, blocks: int, in_chans: int = 1, num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        stages = []
        for i, w in enumerate(widths):
            layer = []
            for j in range(blocks):
                layer.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _register(name: str, blocks: int, widths: Sequence[int] = (16, 32, 64)) -> None:
    def build(in_chans: int = 1, num_classes: int = 10) -> CifarResNet:
        return CifarResNet(blocks, in_chans, num_classes, widths)

    depth = 6 * blocks + 2
    build.__doc__ = f"ResNet-{depth} (CIFAR layout, BasicBlocks {'/'.join(map(str, widths))})."
    register_model(name, family="resnet", first_conv="conv1", classifier="fc")(build)


_register("resnet20", 3)
_register("resnet32", 5)
_register("resnet56", 9)
_register("test_resnet", 1, (8, 16, 16))
