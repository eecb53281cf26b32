"""A small conv-BN CNN: fast to train and prune, the model tests use."""

from typing import Sequence

import torch.nn as nn

from .pooled import PooledConvNet
from .registry import register_model


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(PooledConvNet):
    """conv-BN-ReLU stages with max-pooling between them, global average pool, one Linear."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10,
                 widths: Sequence[Sequence[int]] = ((32, 32), (64, 64), (128,))) -> None:
        layers, cin = [], in_chans
        for i, stage in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for w in stage:
                layers.append(conv_bn(cin, w))
                cin = w
        super().__init__(layers, cin, num_classes)


@register_model("cnn", family="cnn", first_conv="features.0.0", classifier="classifier")
def cnn(in_chans: int = 1, num_classes: int = 10) -> SmallCNN:
    """5-layer conv-BN CNN (32-32-64-64-128), ~140k params."""
    return SmallCNN(in_chans, num_classes)


@register_model("test_cnn", family="cnn", first_conv="features.0.0", classifier="classifier")
def test_cnn(in_chans: int = 1, num_classes: int = 10) -> SmallCNN:
    """Tiny 3-layer CNN (8-16-16) for fast tests."""
    return SmallCNN(in_chans, num_classes, widths=((8,), (16,), (16,)))
