"""VGG-style conv-BN networks: stacks of 3x3 conv-BN-ReLU with max-pooling, global pool, Linear."""

from typing import List, Sequence, Union

import torch.nn as nn

from .pooled import PooledConvNet
from .registry import register_model

Cfg = Sequence[Union[int, str]]

CFGS = {
    "vgg": (32, 32, "M", 64, 64, "M", 128, 128, "M", 256),
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16_bn": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "test_vgg": (8, "M", 16, 16),
}


class VGG(PooledConvNet):
    def __init__(self, cfg: Cfg, in_chans: int = 1, num_classes: int = 10) -> None:
        layers: List[nn.Module] = []
        cin = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                cin = int(v)
        super().__init__(layers, cin, num_classes)


def _register(name: str, doc: str) -> None:
    cfg = CFGS[name]

    def build(in_chans: int = 1, num_classes: int = 10) -> VGG:
        return VGG(cfg, in_chans, num_classes)

    build.__doc__ = doc
    register_model(name, family="vgg", first_conv="features.0", classifier="classifier")(build)


_register("vgg", "VGG-style, 7 conv-BN layers (32-32-64-64-128-128-256), ~0.58M params.")
_register("vgg11_bn", "VGG-11-BN layout for small images, global pool head, ~9.2M params.")
_register("vgg16_bn", "VGG-16-BN layout for small images, global pool head, ~14.7M params.")
_register("test_vgg", "Tiny VGG (8-16-16) for fast tests.")
