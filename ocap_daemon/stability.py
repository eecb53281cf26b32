"""When is the observed class mix stable enough to personalize for?

Pure decisions over class histograms (``Dict[int, int]``: base class id -> predictions), such as the
consecutive windows ``ClassLog.series`` returns oldest first. No I/O, no clock: the daemon reads the
windows, calls :func:`assess`, and if the mix is stable asks :func:`worth_personalizing` whether the
observed set differs enough from what is already served to be worth a pruning job.
"""

import math
from dataclasses import dataclass
from typing import AbstractSet, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from . import settings
from .settings import DURATION, FLOAT, INT, setting

__all__ = ["StabilityConfig", "Stability", "js_distance", "observed_set", "format_set", "pool", "OTHER", "assess",
           "worth_personalizing"]


def _check_counts(hist: Mapping[int, int]) -> None:
    for k, n in hist.items():
        if n < 0:
            raise ValueError(f"negative count {n} for class {k}")


def format_set(classes: Iterable[int]) -> str:
    """A class set as people read it in logs and reasons: ``{0,3,7}``, sorted, no spaces."""
    return "{" + ",".join(str(k) for k in sorted(classes)) + "}"


def js_distance(p: Mapping[int, int], q: Mapping[int, int]) -> float:
    """Jensen-Shannon distance between two histograms after normalizing each to a distribution over the
    union of their classes: the square root of the JS divergence with base-2 logs, so in [0, 1] (0 for
    the same mix, 1 for disjoint classes). A histogram with no predictions has no mix to compare, so
    either one being empty gives the maximum, 1.0. A true metric, which makes one threshold meaningful."""
    _check_counts(p)
    _check_counts(q)
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0) for k in keys], dtype=np.float64)
    b = np.array([q.get(k, 0) for k in keys], dtype=np.float64)
    sa, sb = a.sum(), b.sum()
    if sa <= 0 or sb <= 0:
        return 1.0
    a /= sa
    b /= sb
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0                       # where x > 0, m > 0 too
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    div = 0.5 * (kl(a) + kl(b))
    return math.sqrt(min(1.0, max(0.0, div)))     # clip rounding noise


def observed_set(hist: Mapping[int, int], coverage: float, min_share: float) -> FrozenSet[int]:
    """The classes that make up the mix: take classes by descending count (ties by class id) until their
    cumulative share reaches ``coverage``, then keep those whose own share is at least ``min_share``.
    Coverage drops the long tail of misclassifications; min_share drops a class that only made the cut
    because the tail was thin. An empty histogram gives an empty set."""
    _check_counts(hist)
    total = sum(hist.values())
    if total <= 0:
        return frozenset()
    taken = []
    cum = 0
    for k, n in sorted(((k, n) for k, n in hist.items() if n > 0), key=lambda kn: (-kn[1], kn[0])):
        taken.append((k, n))
        cum += n
        if cum / total >= coverage - 1e-12:
            break
    return frozenset(k for k, n in taken if n / total >= min_share - 1e-12)


OTHER = -1
"""The key :func:`pool` gives the classes outside the set (class ids are >= 0)."""


def pool(hist: Mapping[int, int], classes: AbstractSet[int]) -> Dict[int, int]:
    """``hist`` restricted to ``classes``, everything else summed under :data:`OTHER` (kept only when > 0)."""
    out = {k: n for k, n in hist.items() if k in classes}
    rest = sum(n for k, n in hist.items() if k not in classes)
    if rest:
        out[OTHER] = rest
    return out


@dataclass(frozen=True)
class StabilityConfig:
    """``[stability]``: how steady the class mix must be before personalizing. The INI keys are built
    from these declarations (``ocap_daemon/settings.py``)."""

    window: float = setting(DURATION, 600.0, "Length of one window of the class histogram.", "> 0")
    windows: int = setting(INT, 3, "Consecutive windows that must agree before the class set counts as stable.", ">= 2")
    min_predictions: int = setting(INT, 200, "Fewest predictions a window needs to count.", ">= 1")
    coverage: float = setting(FLOAT, 0.95, "Share of a window's predictions the chosen classes must cover.", "(0, 1]")
    min_share: float = setting(FLOAT, 0.02, "A class with a smaller share of a window is left out.", "[0, 1)")
    js_threshold: float = setting(FLOAT, 0.1, "Largest Jensen-Shannon divergence between consecutive windows that "
                                              "still counts as stable.", "(0, 1]")
    max_classes: int = setting(INT, 5, "Most classes a personalized model may keep.", ">= 1")
    check_interval: float = setting(DURATION, 30.0, "How often stability is evaluated.", "> 0")

    def __post_init__(self) -> None:
        settings.check(self, "stability")


@dataclass(frozen=True)
class Stability:
    """The verdict of :func:`assess`.

    streak: how many of the most recent windows form the stable run, counting the newest (0 if the newest
    window is too small; at most ``needed``); classes: observed set of the newest window; js: JS distance
    between the two newest windows, pooled on ``classes`` (None with fewer than two); reason: why not
    stable ("" when stable).
    """

    stable: bool
    streak: int
    needed: int
    classes: FrozenSet[int]
    js: Optional[float]
    reason: str

    def describe(self) -> str:
        """One line for logs and status: ``stable 3/3, JS 0.021, set {0,3,7}``."""
        head = f"stable {self.streak}/{self.needed}" if self.stable else \
            f"not stable {self.streak}/{self.needed} ({self.reason})"
        js = "n/a" if self.js is None else f"{self.js:.3f}"
        return f"{head}, JS {js}, set {format_set(self.classes)}"


def assess(windows: List[Mapping[int, int]], cfg: StabilityConfig) -> Stability:
    """Is the class mix stable over the newest ``cfg.windows`` windows (given oldest first)?

    Walks back from the newest window: it counts if it has ``min_predictions``; the run extends to the
    window before when that one has enough predictions too, the same observed set, and a JS distance
    below ``js_threshold``. Stable iff the run reaches ``cfg.windows``; the walk stops there.

    The JS distance is taken over the observed set with every other class pooled into one bucket
    (:func:`pool`): the tail of rare misclassifications is mostly counting noise (a class seen 0 times,
    then 2), and on raw histograms of 200-500 predictions it alone puts the JS distance of two samples of
    one fixed mix near 0.1. Pooled, a change in the tail's total weight still counts.
    """
    def size(h: Mapping[int, int]) -> int:
        return sum(h.values())

    def observe(h: Mapping[int, int]) -> FrozenSet[int]:
        return observed_set(h, cfg.coverage, cfg.min_share)

    if not windows:
        return Stability(False, 0, cfg.windows, frozenset(), None, "no windows yet")
    newest = windows[-1]
    classes = observe(newest)
    js = js_distance(pool(windows[-2], classes), pool(newest, classes)) if len(windows) >= 2 else None

    def verdict(streak: int, reason: str) -> Stability:
        return Stability(not reason, streak, cfg.windows, classes, js, reason)

    if size(newest) < cfg.min_predictions:
        return verdict(0, f"window has {size(newest)} predictions, needs {cfg.min_predictions}")
    streak, cur, cur_set = 1, newest, classes
    for prev in reversed(windows[:-1]):
        if streak >= cfg.windows:
            break
        if size(prev) < cfg.min_predictions:
            return verdict(streak, f"earlier window has {size(prev)} predictions, needs {cfg.min_predictions}")
        prev_set = observe(prev)
        if prev_set != cur_set:
            return verdict(streak, f"set changed {format_set(prev_set)} -> {format_set(cur_set)}")
        d = js_distance(pool(prev, cur_set), pool(cur, cur_set))
        if d >= cfg.js_threshold:
            op = ">" if d > cfg.js_threshold else ">="
            return verdict(streak, f"JS {d:.3f} {op} {cfg.js_threshold:.3f}")
        streak, cur = streak + 1, prev
    if streak < cfg.windows:
        return verdict(streak, f"only {streak} windows so far, needs {cfg.windows}")
    return verdict(streak, "")


def worth_personalizing(classes: AbstractSet[int], served_class_ids: Optional[Iterable[int]], num_classes: int,
                        cfg: StabilityConfig) -> Tuple[bool, str]:
    """The class-set part of the personalization trigger: is a stable observed set worth a pruned model?

    Not when it is empty, covers every class (nothing to prune), has more than ``cfg.max_classes`` classes
    (too little to gain), or equals ``served_class_ids``, the classes the serving model already keeps
    (None for the base model, which keeps all). Returns (True, "") or (False, reason).
    """
    got = frozenset(classes)
    if not got:
        return False, "no observed classes"
    if got >= frozenset(range(num_classes)):
        return False, f"set {format_set(got)} covers all {num_classes} classes"
    if len(got) > cfg.max_classes:
        return False, f"set {format_set(got)} has {len(got)} classes, more than max_classes {cfg.max_classes}"
    if served_class_ids is not None and got == frozenset(served_class_ids):
        return False, f"the served model already keeps {format_set(got)}"
    return True, ""
