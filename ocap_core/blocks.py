"""Residual blocks that can leave a model whole (ALGORITHMS.md §11, structure).

A block whose output is its input plus a branch (an identity shortcut) and whose shape does not change
can be replaced by ``nn.Identity``: what the branch added is lost, and fine-tuning has to make up for
it, but the model has fewer operators, which channel pruning alone never removes (on a CPU at batch 1,
a block at width 2 costs nearly as much time as at width 16). Found by tracing, not by class names, so
it works on a user's own residual net; a module torch.fx cannot trace is never a candidate.
"""

import logging
import operator
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from .errors import OcapError

log = logging.getLogger(__name__)
_ADDS = (operator.add, operator.iadd, torch.add)


def _passes_through(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Sequential) and len(module) == 0)


def _adds_its_input(module: nn.Module) -> bool:
    """Whether the traced forward of ``module`` adds its (single) input, unchanged, to something."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception:                      # dynamic control flow, unsupported ops: not a candidate
        return False
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    same = {inputs[0]}                     # the input and what merely passes it on (an empty shortcut)
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.args and n.args[0] in same and _passes_through(gm.get_submodule(n.target)):
            same.add(n)
        is_add = (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_"))
        if is_add and any(a in same for a in n.args[:2]):
            return True
    return False


def _shapes(model: nn.Module, shape: Sequence[int], names: Sequence[str]) -> Dict[str, List[Tuple]]:
    """Per named module, (input shape, output shape) of each call in one forward pass."""
    seen: Dict[str, List[Tuple]] = {n: [] for n in names}
    hooks = []
    for name in names:
        def hook(mod, args, out, name=name):
            ok = len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
            seen[name].append((tuple(args[0].shape), tuple(out.shape)) if ok else (None, "not one tensor"))
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def residual_blocks(model: nn.Module, shape: Sequence[int]) -> List[str]:
    """Names of the innermost modules that hold a conv, add their input to a branch, keep its shape,
    and run once per forward: the blocks ``remove_blocks`` may replace by an identity."""
    names = [n for n, m in model.named_modules()
             if n and not _passes_through(m) and any(isinstance(c, nn.Conv2d) for c in m.modules())]
    names = [n for n in names if _adds_its_input(model.get_submodule(n))]
    calls = _shapes(model, shape, names)
    names = [n for n in names if len(calls[n]) == 1 and calls[n][0][0] == calls[n][0][1]]
    return [n for n in names if not any(o != n and o.startswith(n + ".") for o in names)]


def remove_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Replace each named block of ``model`` (in place) by ``nn.Identity``; returns ``model``."""
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            getattr(parent, leaf)
        except AttributeError as e:
            raise OcapError(f"the model has no block {name!r} to remove") from e
        setattr(parent, leaf, nn.Identity())      # a Sequential's children are attributes "0", "1", ...
    if names:
        log.info("removed %d residual block(s): %s", len(names), ", ".join(names))
    return model


__all__ = ["residual_blocks", "remove_blocks"]
