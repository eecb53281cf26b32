"""A specialist with the base model as its fallback (ALGORITHMS.md §12), numpy only: the serving plane
applies the rule, the search and the gate choose and judge it by the same functions.

The specialist (a pruned model over the K observed classes) answers a frame when its top softmax
probability is at least ``tau``; otherwise the base answers with its whole head, weighted by the class
mix the device saw (``fallback_answer``), so a frame of a class the device has not seen lately is still
answered (and counted) by the full model when the base is sure of it. ``tau = 0`` is the specialist
alone. The reference is the base restricted to the K classes: where the specialist answers, as for a
specialist alone; where the base answers, its answer is the reference's whenever it names a kept
class, and otherwise costs the mass it puts on the kept classes (``fallback_costs``). Confusable class
sets are where this pays: the frames a small model gets wrong are mostly the ones it is unsure of.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .agreement import agreement_costs, standard_error
from .errors import OcapError

FALLBACK_ONNX = "fallback.onnx"         # the base's ONNX file, inside a cascade package
RULE = "top_probability"                # fall back when the specialist's top softmax probability < tau


def falls_back(specialist_probs: np.ndarray, tau: float) -> np.ndarray:
    """Per frame, whether the base answers: the specialist's top probability is below ``tau``."""
    p = np.asarray(specialist_probs)
    return p.max(1) < tau if len(p) else np.zeros(0, bool)


def answer_costs(teacher_k_probs: np.ndarray, class_ids: np.ndarray, kept: Sequence[int]) -> np.ndarray:
    """What answers given as base class ids (a cascade's: the base answers with any of its classes)
    cost per frame against the reference, the base restricted to the ``kept`` classes
    (``teacher_k_probs``, its softmax over them): as ``agreement_costs``, and a whole disagreement's
    worth (the reference's top probability) for a class outside ``kept``."""
    p = np.asarray(teacher_k_probs, np.float64)
    pos = {int(c): i for i, c in enumerate(kept)}
    idx = np.array([pos.get(int(c), -1) for c in np.asarray(class_ids)], np.int64)
    inside = idx >= 0
    out = p.max(1) if len(p) else np.zeros(0)
    if inside.any():
        out = out.copy()
        out[inside] = agreement_costs(p[inside], idx[inside])
    return out


MIN_OUTSIDE_SHARE = 0.01     # the least share of frames of other classes a fallback's prior assumes


def outside_weight(outside_share: float, kept: int, classes: int) -> float:
    """The prior odds of one class outside the ``kept`` ones against one kept class, in the mix the
    device saw (``outside_share``: the share of its frames the base sent to other classes, at least
    ``MIN_OUTSIDE_SHARE``): what the base's softmax, trained on every class equally often, is weighted
    by where it answers for a specialist (``fallback_answer``). 1 weighs every class alike."""
    if classes <= kept or kept < 1:
        return 1.0
    share = min(max(float(outside_share), MIN_OUTSIDE_SHARE), 0.5)
    return (share / (classes - kept)) / ((1.0 - share) / kept)


def fallback_answer(full_probs: np.ndarray, kept_columns: Sequence[int], weight: float) -> np.ndarray:
    """The column the base answers with, per frame, where it answers for a specialist: its softmax with
    every class outside the kept ones weighted by ``weight`` (``outside_weight``). The device has seen
    the kept classes lately, so a frame of another class is a priori rare: the base answers with one
    only when it is that much surer of it (a boot among T-shirts still is), and otherwise with its best
    kept class, which is what the restricted base answers. Its whole head, unweighted, lost 4-6 pp on
    confusable sets (a pullover answered as a coat); weighted, 0.2-0.5 pp (ALGORITHMS.md §12)."""
    p = np.asarray(full_probs, np.float64)
    w = np.full(p.shape[1] if p.ndim == 2 else 0, float(weight))
    w[list(kept_columns)] = 1.0
    return (p * w).argmax(1) if len(p) else np.zeros(0, np.int64)


def fallback_costs(full_probs: np.ndarray, kept_columns: Sequence[int], weight: float = 1.0,
                   hard: bool = False) -> np.ndarray:
    """What the base's own answer (``fallback_answer`` with ``weight``) costs per frame where it
    answers, against the base restricted to the kept classes (``full_probs``: its softmax over all its
    outputs; ``kept_columns``: the kept classes' columns). A kept class is the restricted base's answer
    too: nothing. Another class costs the mass the base puts on the kept classes: the chance, by the
    base's own judgement, that the frame is of a kept class, which its answer then misses (``hard``: a
    whole miss when that is the larger part)."""
    p = np.asarray(full_probs, np.float64)
    if len(p) == 0:
        return np.zeros(0)
    cols = list(kept_columns)
    inside = np.isin(fallback_answer(p, cols, weight), cols)
    mass = p[:, cols].sum(1)
    risk = (mass >= 0.5).astype(np.float64) if hard else mass
    return np.where(inside, 0.0, risk)


@dataclass(frozen=True)
class CascadePoint:
    """A threshold and what it gives on a set of frames: the share that falls back, the end-to-end loss
    in points against the restricted base and its standard error (``agreement.standard_error``)."""

    tau: float
    share: float
    loss_pp: float
    loss_se_pp: float

    def within(self, max_loss: float, z: float) -> bool:
        return self.loss_pp + z * self.loss_se_pp <= max_loss + 1e-9

    def to_dict(self) -> Dict[str, float]:
        return {"tau": round(self.tau, 6), "fallback_share": round(self.share, 5),
                "loss_pp": round(self.loss_pp, 3), "loss_se_pp": round(self.loss_se_pp, 3)}


def at_threshold(conf: np.ndarray, specialist_costs: np.ndarray, base_costs: np.ndarray, tau: float
                 ) -> CascadePoint:
    """The cascade with threshold ``tau`` on frames whose specialist top probability is ``conf``."""
    if len(conf) == 0:
        raise OcapError("no frames to judge a cascade on")
    back = np.asarray(conf) < tau
    return _judged(tau, back, np.where(back, base_costs, specialist_costs))


def _judged(tau: float, back: np.ndarray, costs: np.ndarray) -> CascadePoint:
    """The point at ``tau``, ``back`` the frames it sends to the base, judged by the frames' ``costs``
    (each frame's loss against the reference: its mean and standard error, in points)."""
    return CascadePoint(float(tau), float(np.mean(back)), 100.0 * float(costs.mean()), 100.0 * standard_error(costs))


MARGINS = (1.0, 0.5, 0.0)


def choose_threshold(conf: np.ndarray, specialist_costs: np.ndarray, base_costs: np.ndarray,
                     max_loss: float, z: float = 1.0, margins: Sequence[float] = MARGINS) -> Optional[CascadePoint]:
    """The lowest threshold (the fewest frames falling back) whose end-to-end loss on these frames,
    plus ``z * (1 + margin)`` standard errors, keeps ``max_loss`` points, with the largest of
    ``margins`` that some threshold meets; None when even sending every frame to the base does not. The
    margin leaves room for the frames that judge it afterwards (choosing on some frames and judging on
    others: a threshold chosen to just meet the budget would miss it on the judged half about as often
    as not); few frames allow a smaller one."""
    conf = np.asarray(conf, np.float64)
    if len(conf) == 0:
        raise OcapError("no frames to choose a cascade threshold on")
    # candidates: 0 (the specialist alone), then just above each confidence seen (that frame falls back)
    cands = np.concatenate([[0.0], np.nextafter(np.unique(conf), np.inf)])
    points = [at_threshold(conf, specialist_costs, base_costs, float(tau)) for tau in cands]
    for margin in margins:
        need = z * (1.0 + margin)
        # the loss falls as tau rises only where the base does better on the frames added: scan them all
        for pt in points:
            if pt.loss_pp + need * pt.loss_se_pp <= max_loss + 1e-9:
                return pt
    return None


def cross_fitted(conf: np.ndarray, specialist_costs: np.ndarray, base_costs: np.ndarray, max_loss: float,
                 z: float = 1.0) -> Optional[CascadePoint]:
    """A threshold chosen and judged on the same frames without either deciding the other: the frames
    are split in two folds (alternate frames), each fold's threshold is chosen on it
    (``choose_threshold``), and each fold is judged at the threshold the *other* fold chose, so every
    frame's cost in the verdict comes from a threshold it did not choose (cross-fitting). The point
    returned has the higher of the two thresholds (the one that keeps the budget on both folds' account)
    with its fallback share on all the frames, and the cross-fitted loss and standard error. None when a
    fold finds no threshold. Choosing on the search's early-stopping half instead, the frames that
    picked the specialist's weights, flattered it: the README demo's 1.5x specialist lost 0.2 pp there
    and 0.9 pp on the judged half, its threshold sent 0.7 % of frames back, and the search stopped at
    1.54x in one run of six (docs/benchmarks.md, loop-analysis)."""
    conf = np.asarray(conf, np.float64)
    if len(conf) < 2:
        raise OcapError(f"{len(conf)} frames cannot choose and judge a cascade threshold")
    folds = (np.arange(len(conf)) % 2 == 0, np.arange(len(conf)) % 2 == 1)
    chosen = [choose_threshold(conf[f], specialist_costs[f], base_costs[f], max_loss, z) for f in folds]
    if chosen[0] is None or chosen[1] is None:
        return None
    costs = np.empty(len(conf))
    for f, other in zip(folds, reversed(chosen)):
        costs[f] = np.where(conf[f] < other.tau, base_costs[f], specialist_costs[f])
    tau = max(c.tau for c in chosen)
    return _judged(tau, conf < tau, costs)


def cost_per_frame(specialist_ms: float, base_ms: float, share: float) -> float:
    """Expected time per frame of the cascade: the specialist on every frame, the base on the share
    that falls back (a batch-1 session run costs a fixed overhead on top of its MACs: measured times,
    not MACs, say what a cascade saves)."""
    return float(specialist_ms + share * base_ms)


def macs_per_frame(specialist_macs: float, base_macs: float, share: float) -> float:
    """Expected MACs per frame of the cascade (what ``ocap eval`` reports as ``macs``)."""
    return float(specialist_macs + share * base_macs)


def cascade_entry(base_card: Any, tau: float, weight: float = 1.0) -> Dict[str, Any]:
    """The card's ``cascade`` object for a specialist of ``base_card`` (a ``package.Card``) with
    threshold ``tau`` and the base's ``outside_weight``: the package carries the base's ONNX file as
    ``FALLBACK_ONNX``, the same bytes."""
    return {"rule": RULE, "tau": float(tau), "outside_weight": float(weight),
            "fallback": {"name": base_card.name, "version": base_card.version, "sha256": base_card.files["model.onnx"],
                         "class_ids": list(base_card.class_ids), "outputs": list(base_card.outputs)}}


def cascade_metrics(point: Dict[str, Any], base_macs: float, specialist_macs: float) -> Dict[str, Any]:
    """A cascade's card metrics from its search point (``CascadeJudge.point``): the card's ``macs`` and
    ``mac_reduction`` stay the specialist network's; these say what a frame costs end to end."""
    share = float(point["fallback_share"])
    per_frame = macs_per_frame(specialist_macs, base_macs, share)
    return {"fallback_share": share, "tau": float(point["tau"]), "macs_per_frame": per_frame,
            "mac_reduction_per_frame": float(base_macs) / per_frame, "cascade_loss_pp": point["loss_pp"],
            "cascade_loss_se_pp": point["loss_se_pp"], "cost_per_frame": point["cost"],
            "latency_ms": point["latency_ms"], "base_latency_ms": point["base_latency_ms"]}
