"""Model cost: multiply-accumulates of Conv2d and Linear layers at batch 1, and parameter counts."""

from typing import Sequence

import torch
import torch.nn as nn


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of every Conv2d and Linear for one input of shape C x H x W (no BN, activations or pools)."""
    total = [0]

    def conv_hook(mod: nn.Conv2d, inp, out) -> None:
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total[0] += int(out[0].numel()) * k

    def linear_hook(mod: nn.Linear, inp, out) -> None:
        total[0] += int(out[0].numel()) * mod.in_features

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, nn.Linear):
                handles.append(m.register_forward_hook(linear_hook))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
