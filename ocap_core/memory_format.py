"""The memory format a model trains in on the CPU: channels-last (NHWC) where it is safe, contiguous
(NCHW) where oneDNN's kernels are known to corrupt memory.

NHWC runs oneDNN's faster convolution kernels (a CNN training step 1.4-1.6x, a ResNet-20 one 1.2-1.3x
faster on one thread), but on x86 CPUs whose best instruction set is AVX2 (AMD EPYC, older Xeons;
``ONEDNN_MAX_CPU_ISA=AVX2`` selects it anywhere) the weight gradient of a *strided 1x1* convolution
with few input channels writes past its buffer: ``jit_avx2_1x1_convolution_bwd_weights_t`` copies the
strided NHWC input into a scratch buffer (oneDNN's "reduce to unit stride") that is too small when
the input has fewer channels than a vector holds. glibc then aborts (``free(): invalid next size``)
or the process dies of SIGSEGV in a later ``loss.backward()``. Pruning makes exactly such layers:
ResNet-20's shortcut convolutions (1x1, stride 2) narrowed to 2-7 input channels. The reproduction in
plain torch and the valgrind report are in docs/architecture.md ("Memory format").

NCHW never takes that path (the same shapes are clean under valgrind), so a model with such a layer
trains in NCHW as a whole; every other model keeps NHWC and its speed.
"""

import logging
from typing import List

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

# The crash needs fewer input channels than an AVX2 vector (8 floats); an AVX-512 kernel has the same
# scratch scheme with 16, so the margin covers both vector widths.
MIN_SAFE_CHANNELS = 16


def channels_last_hazards(model: nn.Module) -> List[str]:
    """Names of the convolutions whose channels-last backward can corrupt memory: 1x1 kernel, a stride
    above 1, and fewer than ``MIN_SAFE_CHANNELS`` input channels per group."""
    bad = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) != (1, 1) \
                and m.in_channels // m.groups < MIN_SAFE_CHANNELS:
            bad.append(name)
    return bad


def training_format(model: nn.Module, x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a model trained on image batches ``x`` (N, C, H, W) when none of its
    layers is a ``channels_last_hazards`` one, else ``torch.contiguous_format`` (logged, naming them)."""
    if x.dim() != 4:
        return torch.contiguous_format
    bad = channels_last_hazards(model)
    if bad:
        log.info("training in NCHW: channels-last backward of %s (strided 1x1, < %d input channels) corrupts "
                 "memory on AVX2 CPUs", ", ".join(bad), MIN_SAFE_CHANNELS)
        return torch.contiguous_format
    return torch.channels_last
