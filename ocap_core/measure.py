"""Model cost: multiply-accumulates of Conv2d and Linear layers at batch 1, and parameter counts."""

from typing import Sequence

import torch.nn as nn

from .hooks import probe


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of every Conv2d and Linear for one input of shape C x H x W (no BN, activations or pools)."""
    total = [0]

    def conv_hook(mod: nn.Conv2d, inp, out) -> None:
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total[0] += int(out[0].numel()) * k

    def linear_hook(mod: nn.Linear, inp, out) -> None:
        total[0] += int(out[0].numel()) * mod.in_features

    probe(model, input_shape, [(m, conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
                               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    return total[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
