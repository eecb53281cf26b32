"""Channel scorers that fill an ImportanceTable (ALGORITHMS.md §2), registered by name.

Each takes a model, preprocessed images (N x C x H x W), the class of each image (the base model's
predicted class on a device, the label offline) and a ScoreSpec, and returns a table keyed by layer
names of that model. Forward hooks are removed in ``finally``; nothing is stored on the modules.
"""

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import OcapError
from .hooks import eval_mode, forward_hooks, probe
from .importance import ImportanceTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreSpec:
    """Scorer parameters: LeakyReLU slope α and keep share r of the activation scorer, images per
    class, images per backward pass of the CAP scorer, batch size, seed."""

    slope: float = 0.14
    keep_share: float = 0.05
    images_per_class: int = 30
    cap_batch: int = 10
    batch_size: int = 64
    seed: int = 0


def pick_per_class(groups: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` indices of each class after a seeded shuffle (sorted)."""
    rng = np.random.default_rng(seed)
    out = [rng.permutation(np.flatnonzero(groups == k))[:per_class] for k in np.unique(groups)]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def activation_layers(model: nn.Module, input_shape) -> Dict[str, nn.Module]:
    """Layers whose output channels the activation scorer reads, in forward order: every BatchNorm2d,
    and every Conv2d whose output does not go straight into a BatchNorm2d."""
    names = {m: n for n, m in model.named_modules()}
    order: List[nn.Module] = []
    conv_out: Dict[int, nn.Module] = {}
    conv_with_bn = set()

    def hook(mod, inp, out):
        if isinstance(mod, nn.BatchNorm2d) and id(inp[0]) in conv_out:
            conv_with_bn.add(conv_out[id(inp[0])])
        if isinstance(mod, nn.Conv2d):
            conv_out[id(out)] = mod
        order.append(mod)

    probe(model, input_shape, [(m, hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))])
    layers: Dict[str, nn.Module] = OrderedDict()
    for m in order:
        if isinstance(m, nn.BatchNorm2d) or m not in conv_with_bn:
            layers.setdefault(names[m], m)
    return layers


def _onehot(groups: np.ndarray, num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(groups, dtype=torch.long), num_classes).double()


def marks_per_image(width: int, keep_share: float) -> int:
    """Channels one image marks in a layer of ``width``: as many as the reference's strict test
    against the (1 − r) quantile marks (3 of 64 at r = 0.05), but at least one. The reference marks
    none in a 16-wide layer at r = 0.05 (int(16·0.95) is the last index), which collapsed whole stages."""
    return max(1, width - 1 - min(int(width * (1 - keep_share)), width - 1))


def score_activation(model: nn.Module, x: torch.Tensor, groups: np.ndarray, num_classes: int,
                     spec: ScoreSpec) -> ImportanceTable:
    """OCAP (default): per image and layer, mark the ``marks_per_image`` channels whose LeakyReLU_α
    output has the largest L2 norm, and count marks per class."""
    layers = activation_layers(model, tuple(x.shape[1:]))
    widths = {n: (m.num_features if isinstance(m, nn.BatchNorm2d) else m.out_channels) for n, m in layers.items()}
    table = ImportanceTable.empty("ocap", widths, num_classes)
    current: Dict[str, torch.Tensor] = {}
    hooks = [(m, lambda mod, i, o, n=n: current.__setitem__(n, o.detach())) for n, m in layers.items()]
    with eval_mode(model), forward_hooks(hooks), torch.no_grad():
        for i in range(0, len(x), spec.batch_size):
            current.clear()
            model(x[i:i + spec.batch_size])
            onehot = _onehot(groups[i:i + spec.batch_size], num_classes)
            for name, out in current.items():
                s = F.leaky_relu(out, spec.slope).flatten(2).norm(dim=2)       # (n, C_l)
                top = s.topk(marks_per_image(s.shape[1], spec.keep_share), dim=1).indices
                mark = torch.zeros_like(s, dtype=torch.float64).scatter_(1, top, 1.0)
                table.hits[name] += (mark.T @ onehot).numpy()
                table.mag[name] += (s.double().T @ onehot).numpy()
            table.n += onehot.sum(0).numpy()
    return table


def score_cap(model: nn.Module, x: torch.Tensor, groups: np.ndarray, num_classes: int,
              spec: ScoreSpec) -> ImportanceTable:
    """CAP: per class, the share of its images for which |a · ∂CE/∂a| > 0 at each Conv2d output
    position; M[c, k] = max over positions; side vector ``soft_count`` σ[c] = max_p Σ_k F_k[c, p]."""
    convs = OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    table = ImportanceTable.empty("cap", {n: m.out_channels for n, m in convs.items()}, num_classes)
    sums: Dict[str, Dict[int, torch.Tensor]] = {n: {} for n in convs}
    outs: Dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(mod, inp, out):
            out.retain_grad()
            outs[name] = out
        return hook

    with eval_mode(model), forward_hooks([(m, keep(n)) for n, m in convs.items()]), torch.enable_grad():
        for k in np.unique(groups):
            idx = np.flatnonzero(groups == k)
            for i in range(0, len(idx), spec.cap_batch):
                b = idx[i:i + spec.cap_batch]
                outs.clear()
                model.zero_grad(set_to_none=True)
                target = torch.full((len(b),), int(k), dtype=torch.long)
                xb = x[b].clone().requires_grad_(True)    # activations need grad even with frozen weights
                F.cross_entropy(model(xb), target).backward()
                for name, a in outs.items():
                    ind = ((a.detach() * a.grad).abs() > 0).double().sum(0).flatten(1)   # (C_l, P)
                    prev = sums[name].get(int(k))
                    sums[name][int(k)] = ind if prev is None else prev + ind
            table.n[int(k)] += len(idx)
        model.zero_grad(set_to_none=True)
    soft: Dict[str, np.ndarray] = {}
    for name in convs:
        total = None
        for k, s in sums[name].items():
            f_k = s / table.n[k]
            table.hits[name][:, k] = f_k.max(dim=1).values.numpy() * table.n[k]
            total = f_k if total is None else total + f_k
        soft[name] = total.max(dim=1).values.numpy() if total is not None else np.zeros(convs[name].out_channels)
    table.side["soft_count"] = soft
    return table


def _agnostic(name: str, model: nn.Module, num_classes: int, values: Callable[[nn.Conv2d], np.ndarray]
              ) -> ImportanceTable:
    convs = OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    table = ImportanceTable.empty(name, {n: m.out_channels for n, m in convs.items()}, num_classes,
                                  class_agnostic=True)
    table.n[:] = 1
    for n, m in convs.items():
        v = values(m)
        table.mag[n] = np.repeat(v[:, None], num_classes, axis=1)
        table.hits[n] = np.repeat((v / max(v.max(), 1e-12))[:, None], num_classes, axis=1)
    return table


def score_l1(model: nn.Module, x: torch.Tensor, groups: np.ndarray, num_classes: int,
             spec: ScoreSpec) -> ImportanceTable:
    """L1 (class-agnostic baseline): ‖W_f‖₁ of each Conv2d filter."""
    return _agnostic("l1", model, num_classes,
                     lambda m: m.weight.detach().abs().flatten(1).sum(1).double().numpy())


def score_random(model: nn.Module, x: torch.Tensor, groups: np.ndarray, num_classes: int,
                 spec: ScoreSpec) -> ImportanceTable:
    """Random (baseline): a seeded uniform value per Conv2d channel."""
    rng = np.random.default_rng(spec.seed)
    return _agnostic("random", model, num_classes, lambda m: rng.random(m.out_channels))


def score_frequency(model: nn.Module, x: torch.Tensor, groups: np.ndarray, num_classes: int,
                    spec: ScoreSpec) -> ImportanceTable:
    """OCAP-FR: the activation scorer's table; its rule keeps a fixed share of each layer, ranked by
    the hits summed over the observed classes."""
    table = score_activation(model, x, groups, num_classes, spec)
    table.scorer = "ocap-freq"
    return table


Scorer = Callable[[nn.Module, torch.Tensor, np.ndarray, int, ScoreSpec], ImportanceTable]
SCORERS: Dict[str, Scorer] = {
    "ocap": score_activation,
    "ocap-freq": score_frequency,
    "cap": score_cap,
    "l1": score_l1,
    "random": score_random,
}


def score(name: str, model: nn.Module, x: torch.Tensor, groups: np.ndarray, num_classes: int,
          spec: ScoreSpec) -> ImportanceTable:
    """Run scorer ``name`` on ``spec.images_per_class`` images of each class present in ``groups``."""
    if name not in SCORERS:
        raise OcapError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
    if name in ("ocap", "ocap-freq") and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        log.warning("the model has no BatchNorm2d: the activation scorer reads Conv2d outputs")
    idx = pick_per_class(np.asarray(groups), spec.images_per_class, spec.seed)
    return SCORERS[name](model, x[idx], np.asarray(groups)[idx], num_classes, spec)
