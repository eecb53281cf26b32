"""How far a personalized model's answers fall from the base model's, restricted to the kept classes
(numpy only: the engine's search and the daemon's gate judge candidates by the same numbers)."""

import math
from typing import Optional

import numpy as np


def agreement_costs(teacher_probs: np.ndarray, student_idx: np.ndarray) -> np.ndarray:
    """Per image, p_t(teacher's class) − p_t(student's class): what ``expected_agreement`` averages."""
    p = np.asarray(teacher_probs, np.float64)
    if len(p) == 0:
        raise ValueError("no images to measure agreement on")
    idx = np.asarray(student_idx, np.int64)
    return p.max(1) - p[np.arange(len(p)), idx]


def standard_error(costs: np.ndarray) -> float:
    """Standard error of the mean of per-image costs, counted as if one more image had been a sure
    disagreement (cost 1): no disagreement seen on n images does not show a loss below about 1/n, and the
    search accepts the last of several levels, the one most likely to have been lucky. (The demo's search
    saw 0.06 pp on 132 judged images at 6.6x; its test loss was 1.13 pp.)"""
    c = np.append(np.asarray(costs, np.float64), 1.0)
    return float(c.std(ddof=1) / np.sqrt(len(c)))


def smallest_loss_shown(n: int, z: float = 1.0) -> float:
    """The smallest loss, in points, that ``n`` judged images can show within a budget: ``z`` standard
    errors of a candidate that never disagreed."""
    return 100.0 * z * standard_error(np.zeros(max(0, int(n))))


MIN_DISAGREEMENTS = 3.0    # a budget is judged on frames enough for this many sure disagreements to fit in it


def judged_images_needed(max_loss: float, z: float = 1.0) -> int:
    """The judged images a ``max_loss``-point budget needs (the search judges on half of the held-back
    images; the daemon waits for twice this many): enough that ``MIN_DISAGREEMENTS`` sure disagreements
    fit in the budget, so that no single image decides a verdict (a 1-point budget judged on 158 images
    put the README demo at 1.56x in one run and 4.00x in the next), and at least enough to show the
    budget at all (``smallest_loss_shown``)."""
    if max_loss <= 0:
        raise ValueError(f"a loss budget of {max_loss} points cannot be shown on any number of images")
    return max(_fewest_showing(max_loss, z), int(math.ceil(100.0 * MIN_DISAGREEMENTS / max_loss - 1e-9)))


def smallest_budget(n: int, z: float = 1.0) -> float:
    """The smallest loss budget, in points, that ``n`` judged images can judge (``judged_images_needed``
    turned round): what to suggest to a user whose data is short."""
    n = int(n)
    return max(smallest_loss_shown(n, z), 100.0 * MIN_DISAGREEMENTS / n) if n > 0 else float("inf")


def budget_to_suggest(n: int, z: float = 1.0) -> Optional[float]:
    """The budget to suggest to a user whose data gives ``n`` judged images: ``smallest_budget`` rounded
    up to half a point, or None when no budget within 100 points can be judged on them."""
    b = smallest_budget(n, z)
    return math.ceil(2 * b) / 2 if b <= 100 else None


def _fewest_showing(max_loss: float, z: float) -> int:
    """The fewest judged images on which a candidate that never disagreed shows a loss within
    ``max_loss`` points."""
    n = 1
    while smallest_loss_shown(n, z) > max_loss:
        n *= 2
    lo, hi = n // 2, n                    # smallest_loss_shown(lo) > max_loss >= smallest_loss_shown(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if smallest_loss_shown(mid, z) > max_loss else (lo, mid)
    return hi


def expected_agreement(teacher_probs: np.ndarray, student_idx: np.ndarray) -> float:
    """1 − mean over images of p_t(teacher's class) − p_t(student's class), where ``teacher_probs``
    (N x K) is the teacher's softmax over the K kept classes and ``student_idx`` the student's answers as
    indices into them. A disagreement where the teacher hesitates (0.55 vs 0.45) costs 0.1, one where it
    is sure costs about 1: unlike counting disagreements, this follows what pruning costs in accuracy when
    the teacher is roughly calibrated (ALGORITHMS.md §11). Equal to plain agreement for a sure teacher."""
    return float(1.0 - agreement_costs(teacher_probs, student_idx).mean())


def restricted_softmax(probs: np.ndarray, columns) -> np.ndarray:
    """A softmax over all outputs, renormalized over ``columns`` (the kept classes)."""
    p = np.asarray(probs, np.float64)[:, list(columns)]
    return p / np.maximum(p.sum(1, keepdims=True), 1e-300)
