"""Selection rules (ALGORITHMS.md §3-4): importance table -> which channels to keep (numpy only).

A rule gives a keep mask per table layer; ``group_masks`` turns those into one mask per channel group
(OR over the group's members, so an expand conv and its depthwise conv, or every member of a residual
addition, share one mask), keeps protected groups whole, and tops every group up to its minimum width
by score. Class-agnostic baselines keep, per group, a given number of their best-scored channels.
"""

import math
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from .errors import OcapError
from .importance import ImportanceTable, class_counts

Masks = Dict[str, np.ndarray]


def rule_personalize(table: ImportanceTable, classes: Sequence[int], tau: float = 0.0, **_) -> Masks:
    """Personalize (OCAP): keep a channel iff it matters for any observed class: max_{k∈S} M > τ."""
    return {k: table.M(k)[:, list(classes)].max(axis=1) > tau for k in table.layers}


def rule_frequency(table: ImportanceTable, classes: Sequence[int], keep_share: float = 0.05, **_) -> Masks:
    """OCAP-FR: per layer, keep channels whose hits summed over S exceed the (1 − r) quantile (strict)."""
    out = {}
    for k in table.layers:
        h = table.hits[k][:, list(classes)].sum(axis=1)
        thr = np.sort(h)[min(int(len(h) * (1 - keep_share)), len(h) - 1)]
        out[k] = h > thr
    return out


def rule_cap(table: ImportanceTable, classes: Sequence[int], threshold: int = 2, tau: float = 0.0,
             soft: bool = False, **_) -> Masks:
    """CAP global: prune channels that matter for fewer than T classes of all C (hard count of
    M > τ, or CAP's soft class count σ when ``soft``)."""
    if soft:
        if "soft_count" not in table.side:
            raise OcapError("the soft class count needs the 'cap' scorer")
        return {k: table.side["soft_count"][k] >= threshold for k in table.layers}
    return {k: class_counts(table, k, tau) >= threshold for k in table.layers}


def rule_hybrid(table: ImportanceTable, classes: Sequence[int], freqs: Optional[Mapping[int, float]] = None,
                theta: float = 0.0, tau: float = 0.0, **_) -> Masks:
    """Hybrid: u_f = Σ_{k∈S} p_k·1[M > τ] with observed class shares p_k; keep iff u_f > θ
    (θ = 0 is Personalize)."""
    cls = list(classes)
    p = np.asarray([float((freqs or {}).get(k, 1.0)) for k in cls])
    p = p / p.sum()
    return {k: (table.M(k)[:, cls] > tau).astype(float) @ p > theta for k in table.layers}


RULES: Dict[str, Callable[..., Masks]] = {
    "personalize": rule_personalize,
    "frequency": rule_frequency,
    "cap": rule_cap,
    "hybrid": rule_hybrid,
}


def apply_rule(name: str, table: ImportanceTable, classes: Sequence[int], **params) -> Masks:
    if name not in RULES:
        raise OcapError(f"unknown rule {name!r}; choose from {', '.join(RULES)}")
    if table.class_agnostic:
        raise OcapError(f"the {table.scorer} scorer is class-agnostic: use it with matched widths or a MAC target")
    return RULES[name](table, classes, **params)


def layer_scores(table: ImportanceTable, classes: Sequence[int]) -> Dict[str, np.ndarray]:
    """Ranking score per channel: Σ_{k∈S} M, ties broken by the mean raw score over S."""
    cls = list(classes)
    out = {}
    for k in table.layers:
        mag = table.mean_mag(k)[:, cls].sum(axis=1)
        out[k] = table.M(k)[:, cls].sum(axis=1) + 1e-6 * mag / max(float(np.abs(mag).max()), 1e-12)
    return out


def usage_scores(table: ImportanceTable, classes: Sequence[int],
                 freqs: Optional[Mapping[int, float]] = None) -> Dict[str, np.ndarray]:
    """Ranking score per channel for the search: how often (M) and how strongly (mean raw score,
    relative to the layer's strongest channel for that class) the observed classes use it, averaged
    and weighted by their observed shares p_k (uniform without ``freqs``). In [0, 1]."""
    cls = list(classes)
    p = np.asarray([max(float((freqs or {}).get(k, 1.0)), 0.0) for k in cls])
    p = p / p.sum() if p.sum() > 0 else np.full(len(cls), 1.0 / len(cls))
    out = {}
    for k in table.layers:
        mag = np.abs(table.mean_mag(k)[:, cls])
        rel = mag / np.maximum(mag.max(axis=0, keepdims=True), 1e-12)
        out[k] = 0.5 * (table.M(k)[:, cls] + rel) @ p
    return out


def _combine(group, per_layer: Mapping[str, np.ndarray], fill, reduce) -> Optional[np.ndarray]:
    """Map members' per-channel values to root indices and reduce them (OR / max)."""
    out = None
    for layer, root_idx in group.members.items():
        if layer not in per_layer:
            continue
        v = np.full(group.width, fill, dtype=np.asarray(per_layer[layer]).dtype)
        v[root_idx] = per_layer[layer]
        out = v if out is None else reduce(out, v)
    return out


def group_scores(groups: Iterable, scores: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Per group: the max over its members' channel scores (0 where no member is scored)."""
    out = {}
    for g in groups:
        s = _combine(g, scores, -np.inf, np.maximum)
        out[g.root] = np.zeros(g.width) if s is None else np.where(np.isfinite(s), s, 0.0)
    return out


def min_keep(width: int, min_width: int = 1, min_share: float = 0.0, round_to: int = 1) -> int:
    n = max(min_width, int(math.ceil(min_share * width)), 1)
    if round_to > 1:
        n = int(math.ceil(n / round_to) * round_to)
    return min(n, width)


def top_up(mask: np.ndarray, score: np.ndarray, count: int) -> np.ndarray:
    """``mask`` plus the best-scored channels not in it until ``count`` are kept (stable by index)."""
    mask = mask.copy()
    need = count - int(mask.sum())
    if need > 0:
        order = [i for i in np.argsort(-score, kind="stable") if not mask[i]]
        mask[order[:need]] = True
    return mask


def group_masks(groups: Iterable, layer_keep: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray],
                protected: Iterable[str] = (), min_width: int = 1, min_share: float = 0.0,
                round_to: int = 1) -> Dict[str, np.ndarray]:
    """One keep mask per group: OR of its members' masks, whole if protected or unscored, at least
    ``min_keep`` channels (topped up by score), the kept count rounded up to ``round_to``."""
    protected = set(protected)
    gscore = group_scores(groups, scores)
    out = {}
    for g in groups:
        keep = _combine(g, {k: np.asarray(v, bool) for k, v in layer_keep.items()}, False, np.logical_or)
        if g.root in protected or g.grouped or keep is None:
            out[g.root] = np.ones(g.width, bool)
            continue
        n = max(min_keep(g.width, min_width, min_share, 1), int(keep.sum()))
        if round_to > 1:
            n = min(int(math.ceil(n / round_to) * round_to), g.width)
        out[g.root] = top_up(keep, gscore[g.root], n)
    return out


def matched_masks(groups: Iterable, scores: Mapping[str, np.ndarray], counts: Mapping[str, int]
                  ) -> Dict[str, np.ndarray]:
    """Class-agnostic baselines at equal widths: per group, keep its ``counts[root]`` best channels."""
    gscore = group_scores(groups, scores)
    return {g.root: top_up(np.zeros(g.width, bool), gscore[g.root], int(counts.get(g.root, g.width)))
            for g in groups}
