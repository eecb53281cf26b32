"""The one adapter over Torch-Pruning (pinned 1.6.1): dependency groups of a model, physical removal
of channels by group, head slicing, and replay of a saved pruning history.

Torch-Pruning's traps (ALGORITHMS.md §4) are handled here and nowhere else: graph building needs grad
mode and parameters that require grad (a fine-tuned, frozen model traces without its layers), tracing leaves the model in eval mode, unknown ops pass silently as element-wise (made errors
here), indices refer to current widths (each group's drop list is computed just before it is pruned),
and pruning replaces Parameters (callers build optimizers afterwards).
"""

import logging
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import OcapError

log = logging.getLogger(__name__)


def _tp():
    import torch_pruning as tp

    return tp


@dataclass
class ChannelGroup:
    """Channels that must be removed together (a conv, its BN, its consumers, everything an addition
    couples), indexed by the root conv's output channels."""

    root: str
    width: int
    members: Dict[str, np.ndarray] = field(default_factory=dict)   # layer -> root index of each of its channels
    convs: List[str] = field(default_factory=list)                 # Conv2d members whose outputs are pruned
    stream: bool = False          # an addition couples several convs' outputs (residual stream)
    depthwise: bool = False       # holds a depthwise conv (expand + depthwise share this group)
    grouped: bool = False         # holds a grouped conv (1 < groups < in_channels): kept whole
    feeds_head: bool = False      # the classifier reads these channels


class PrunableModel:
    """A model with its Torch-Pruning dependency graph. ``classifier`` is never pruned by groups;
    ``slice_head`` removes its rows instead."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], classifier: str) -> None:
        tp = _tp()
        self.model = model
        self.classifier = classifier
        was_training = model.training
        frozen = [p for p in model.parameters() if not p.requires_grad]
        self.dg = tp.DependencyGraph()
        with torch.enable_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                for p in frozen:            # the trace follows autograd: a frozen layer would be left out
                    p.requires_grad_(True)
                self.dg.build_dependency(model, example_inputs=(torch.zeros(1, *input_shape),), verbose=True)
            except Exception as e:
                raise OcapError(f"Torch-Pruning cannot trace the model: {type(e).__name__}: {e}") from e
            finally:
                model.train(was_training)
                for p in frozen:
                    p.requires_grad_(False)
        for w in caught:
            text = str(w.message)
            if "Unknown operation" in text or "Unwrapped parameters" in text:
                raise OcapError(f"unsupported operation for structural pruning: {text.strip()}")
        self.names = {m: n for n, m in model.named_modules()}
        try:
            head = model.get_submodule(classifier)
        except AttributeError as e:
            raise OcapError(f"the model has no classifier module {classifier!r}") from e
        self.groups = self._groups(head)

    def _groups(self, head: nn.Module) -> List[ChannelGroup]:
        groups = []
        for g in self.dg.get_all_groups(ignored_layers=[head], root_module_types=(nn.Conv2d,)):
            root_mod = g[0].dep.target.module
            cg = ChannelGroup(self.names[root_mod], len(g[0].idxs))
            for item in g:
                mod = item.dep.target.module
                if mod not in self.names:        # Torch-Pruning's own op nodes (add, concat, ...)
                    continue
                out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
                if mod is head and not out:
                    cg.feeds_head = True
                if isinstance(mod, nn.Conv2d) and 1 < mod.groups and mod.groups != mod.in_channels:
                    cg.grouped = True
                if not out or not isinstance(mod, (nn.Conv2d, nn.BatchNorm2d)):
                    continue
                name = self.names[mod]
                root_idx = np.asarray(item.root_idxs, dtype=np.int64)
                order = np.argsort(np.asarray(item.idxs))
                cg.members[name] = root_idx[order]
                if isinstance(mod, nn.Conv2d):
                    cg.convs.append(name)
                    if mod.groups == mod.in_channels and mod.groups > 1:
                        cg.depthwise = True
            cg.stream = sum(1 for c in cg.convs if self.model.get_submodule(c).groups == 1) > 1
            groups.append(cg)
        return groups

    def group_of(self, layer: str) -> Optional[ChannelGroup]:
        for g in self.groups:
            if layer in g.members:
                return g
        return None

    def prune(self, keep: Dict[str, np.ndarray]) -> Dict[str, int]:
        """Remove, per group root, the channels whose ``keep`` entry is False. Returns kept widths."""
        tp = _tp()
        widths = {}
        for g in self.groups:
            mask = np.asarray(keep.get(g.root, np.ones(g.width, bool)), bool)
            if mask.shape != (g.width,):
                raise OcapError(f"keep mask for {g.root!r} has {mask.shape} entries, the group has {g.width}")
            if not mask.any():
                raise OcapError(f"keep mask for {g.root!r} removes every channel; at least one must stay")
            widths[g.root] = int(mask.sum())
            drop = [int(i) for i in np.flatnonzero(~mask)]
            if not drop:
                continue
            root = self.model.get_submodule(g.root)
            # indices refer to the root's current width: this group's root is untouched until now
            group = self.dg.get_pruning_group(root, tp.prune_conv_out_channels, drop)
            group.prune()
        return widths

    def prune_positions(self, drops: Dict[str, np.ndarray]) -> None:
        """Remove, per named conv (a group root of the model this one was pruned from), the output
        channels at the given positions of its current width, with everything coupled to them."""
        tp = _tp()
        for root, pos in drops.items():
            drop = sorted(int(i) for i in pos)
            if not drop:
                continue
            try:
                mod = self.model.get_submodule(root)
            except AttributeError as e:
                raise OcapError(f"the model has no layer {root!r} to prune") from e
            if len(drop) >= mod.out_channels or drop[-1] >= mod.out_channels:
                raise OcapError(f"cannot drop positions {drop[:5]}... of {root!r} ({mod.out_channels} channels)")
            self.dg.get_pruning_group(mod, tp.prune_conv_out_channels, drop).prune()

    def slice_head(self, class_ids: Sequence[int]) -> None:
        """Keep the classifier's rows for ``class_ids`` (ascending base ids), in that order."""
        tp = _tp()
        head = self.model.get_submodule(self.classifier)
        ids = list(class_ids)
        if ids != sorted(set(ids)):
            raise OcapError(f"class ids must be ascending and distinct, got {ids}")
        drop = [k for k in range(head.out_features) if k not in set(ids)]
        if drop:
            self.dg.get_pruning_group(head, tp.prune_linear_out_channels, drop).prune()

    def history(self) -> List[list]:
        """The pruning history as plain JSON: [module name, is_out_channels, [indices]]."""
        return [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in self.dg.pruning_history()]


def replay_history(model: nn.Module, input_shape: Sequence[int], history: List[list]) -> nn.Module:
    """Apply a saved pruning history to a freshly built base model (then load the pruned state_dict)."""
    tp = _tp()
    dg = tp.DependencyGraph()
    was_training = model.training
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg.build_dependency(model, example_inputs=(torch.zeros(1, *input_shape),), verbose=False)
    model.train(was_training)
    try:
        dg.load_pruning_history([[n, bool(o), list(i)] for n, o, i in history])
    except (AttributeError, IndexError, ValueError) as e:
        raise OcapError(f"the pruning history does not fit this model: {e}") from e
    return model


def reset_params_grad(model: nn.Module, trainable: bool = True) -> None:
    """Pruning replaces Parameters with requires_grad=True: set the wanted state again."""
    for p in model.parameters():
        p.requires_grad_(trainable)
