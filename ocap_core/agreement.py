"""How far a personalized model's answers fall from the base model's, restricted to the kept classes
(numpy only: the engine's search and the daemon's gate judge candidates by the same numbers)."""

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


def judged_images_needed(max_loss: float, z: float = 1.0) -> int:
    """The fewest judged images on which a candidate can show a loss within ``max_loss`` points (the
    search judges on half of the held-back images; the daemon waits for twice this many)."""
    if max_loss <= 0:
        raise ValueError(f"a loss budget of {max_loss} points cannot be shown on any number of images")
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
