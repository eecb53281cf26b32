"""Context managers for forward hooks and eval mode: hooks are removed and the mode restored in
``finally``, and nothing is left on the modules (Torch-Pruning's hook helper leaves attributes behind)."""

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence, Tuple

import torch
import torch.nn as nn

Hook = Callable[[nn.Module, tuple, object], None]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@contextmanager
def forward_hooks(pairs: Iterable[Tuple[nn.Module, Hook]]) -> Iterator[None]:
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def probe(model: nn.Module, input_shape: Sequence[int], pairs: Iterable[Tuple[nn.Module, Hook]],
          batch: int = 1) -> torch.Tensor:
    """One eval-mode, no-grad forward pass on zeros with the given hooks attached; returns the output."""
    with eval_mode(model), forward_hooks(pairs), torch.no_grad():
        return model(torch.zeros(batch, *input_shape))
