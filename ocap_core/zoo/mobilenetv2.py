"""MobileNetV2 for small images (inverted residuals, depthwise convs), torchvision's module names."""

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from .registry import register_model


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, k=1))
        layers += [conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# (expansion t, channels c, repeats n, first stride s). CIFAR variant (kuangliu): stem and stage 2 at
# stride 1. SMALL: stem at stride 1, then strides 2, 2, 2 (28 -> 14 -> 7 -> 4): a third of the MACs.
CIFAR_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
SMALL_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, in_chans: int = 1, num_classes: int = 10, width: float = 1.0, last_channel: int = 1280,
                 setting: Sequence[Tuple[int, int, int, int]] = CIFAR_SETTING, dropout: float = 0.0) -> None:
        super().__init__()
        cin = _make_divisible(32 * width)
        features: List[nn.Module] = [conv_bn_relu6(in_chans, cin, stride=1)]
        for t, c, n, s in setting:
            cout = _make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(conv_bn_relu6(cin, last_channel, k=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last_channel, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


@register_model("mobilenetv2", family="mobilenetv2", first_conv="features.0.0", classifier="classifier")
def mobilenetv2(in_chans: int = 1, num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2, width 0.5, strides 1-2-2-2, 1024-wide last conv, ~0.66M params, 12M MACs at 28x28."""
    return MobileNetV2(in_chans, num_classes, width=0.5, last_channel=1024, setting=SMALL_SETTING, dropout=0.1)


@register_model("mobilenetv2_100", family="mobilenetv2", first_conv="features.0.0", classifier="classifier")
def mobilenetv2_100(in_chans: int = 1, num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 (CIFAR strides), width 1.0, ~2.2M params."""
    return MobileNetV2(in_chans, num_classes, width=1.0, last_channel=1280, dropout=0.2)


@register_model("test_mobilenetv2", family="mobilenetv2", first_conv="features.0.0", classifier="classifier")
def test_mobilenetv2(in_chans: int = 1, num_classes: int = 10) -> MobileNetV2:
    """Tiny MobileNetV2 (4 inverted residual blocks) for fast tests."""
    setting = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2))
    return MobileNetV2(in_chans, num_classes, width=0.5, last_channel=64, setting=setting)
