"""When to go back to the base model: drift while a pruned model serves, and probation after a deploy.

Pure decisions over counts the daemon has already read (teacher-checked class histograms, low-confidence
counts, per-model rates). No I/O, no clock. ``DriftConfig`` and ``ProbationConfig`` are the ``[drift]``
and ``[probation]`` sections of ocapd's INI (declared here, see ``ocap_daemon/settings.py``). Limits are inclusive: a share exactly at its limit passes.
"""

from dataclasses import dataclass
from typing import AbstractSet, List, Mapping, Optional, Tuple

from . import settings
from .settings import DURATION, FLOAT, INT, setting
from .stability import format_set

__all__ = ["DriftConfig", "drift_reason", "ProbationConfig", "Rates", "probation_verdict"]

# float differences of shares (0.3 - 0.2) land a hair off; a rise this close to its limit is at the limit
_EPS = 1e-9


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


@dataclass(frozen=True)
class DriftConfig:
    """``[drift]``: teacher checks while a pruned model serves, and when it no longer fits what the
    camera sees. ``max_outside_share`` is a margin: the limit is the share of frames outside the kept
    classes seen while the set was stable (the base model's own confusions) plus this."""

    teacher_share: float = setting(FLOAT, 0.1, "Share of frames the base model also classifies while a personalized "
                                               "model serves.", "[0, 1]")
    window: float = setting(DURATION, 120.0, "Length of the window drift is judged over.", "> 0")
    min_checks: int = setting(INT, 50, "Fewest teacher checks in a window before drift can be declared.", ">= 1")
    max_outside_share: float = setting(FLOAT, 0.1, "Revert when teacher predictions outside the kept classes exceed "
                                                   "their share while stable by this.", "[0, 1]")
    max_low_confidence: float = setting(FLOAT, 0.3, "Revert to the base model when more served predictions than this "
                                                    "share are low-confidence.", "[0, 1]")
    cooldown: float = setting(DURATION, 1800.0, "After a revert, wait this long before personalizing again.", ">= 0")

    def __post_init__(self) -> None:
        settings.check(self, "drift")

    def outside_limit(self, baseline: float) -> float:
        """The largest share of teacher checks outside the kept classes: ``baseline`` plus the margin."""
        return min(1.0, baseline + self.max_outside_share)


def drift_reason(teacher_hist: Mapping[int, int], kept: AbstractSet[int], served_low_conf: int, served_n: int,
                 cfg: DriftConfig, baseline: float = 0.0) -> Optional[str]:
    """Why the pruned model should give way to the base model, or None when it still fits.

    ``teacher_hist``: the base model's predictions on the frames it checked in the window; the share of
    them outside ``kept`` is scene drift the pruned model cannot even name, past ``baseline`` (the share
    outside while the set was stable) plus the config's margin. ``served_low_conf`` of
    ``served_n`` served frames were low-confidence. With fewer than ``cfg.min_checks`` teacher checks
    nothing is judged (None): a handful of checks is noise. Both failures are reported, joined by "; ".
    """
    checks = sum(teacher_hist.values())
    if checks < cfg.min_checks:
        return None
    reasons: List[str] = []
    outside = {k: n for k, n in teacher_hist.items() if k not in kept and n > 0}
    share = sum(outside.values()) / checks
    limit = cfg.outside_limit(baseline)
    if share > limit + _EPS:
        top = min(outside, key=lambda k: (-outside[k], k))
        reasons.append(f"classes outside the kept set {format_set(kept)}: {_pct(share)} of {checks} "
                       f"teacher-checked frames (limit {_pct(limit)}), mostly class {top}")
    if served_n > 0:
        low = served_low_conf / served_n
        if low > cfg.max_low_confidence + _EPS:
            reasons.append(f"low-confidence rate {_pct(low)} of {served_n} served frames "
                           f"(limit {_pct(cfg.max_low_confidence)})")
    return "; ".join(reasons) if reasons else None


@dataclass(frozen=True)
class ProbationConfig:
    """``[probation]``: how long, and how much worse than the model it replaced, a newly deployed model
    may do (shares as fractions: 0.1 = 10 points)."""

    duration: float = setting(DURATION, 900.0, "How long a newly swapped-in model is on probation.", "> 0")
    max_low_confidence_rise: float = setting(FLOAT, 0.05, "Revert during probation if the low-confidence share rises "
                                                          "by more than this.", "[0, 1]")
    max_disagreement: float = setting(FLOAT, 0.1, "Revert during probation if more teacher checks than this share "
                                                  "disagree.", "[0, 1]")

    def __post_init__(self) -> None:
        settings.check(self, "probation")


@dataclass(frozen=True)
class Rates:
    """One model's record over a period: n frames served, the low-confidence share of them, and the share
    of teacher-checked frames where it disagreed with the teacher (None when unknown, e.g. the base model)."""

    n: int
    low_confidence_share: float
    disagreement: Optional[float] = None


def probation_verdict(before: Rates, during: Rates, cfg: ProbationConfig, min_frames: int) -> Tuple[str, str]:
    """Judge a deployed model on probation against the model it replaced.

    ("pending", why) until it has served ``min_frames``; ("failed", reason) if its low-confidence share
    rose by more than ``cfg.max_low_confidence_rise`` or it disagreed with the teacher on more than
    ``cfg.max_disagreement`` of checked frames; else ("passed", the figures).
    """
    if during.n < min_frames:
        return "pending", f"{during.n} of {min_frames} frames served so far"
    rise = during.low_confidence_share - before.low_confidence_share
    low = (f"low-confidence share {_pct(before.low_confidence_share)} -> {_pct(during.low_confidence_share)} "
           f"({100 * rise:+.1f} points, limit +{100 * cfg.max_low_confidence_rise:.1f})")
    dis = None if during.disagreement is None else \
        f"disagreement with the teacher {_pct(during.disagreement)} (limit {_pct(cfg.max_disagreement)})"
    failures: List[str] = []
    if rise > cfg.max_low_confidence_rise + _EPS:
        failures.append(low)
    if during.disagreement is not None and during.disagreement > cfg.max_disagreement + _EPS:
        failures.append(str(dis))
    if failures:
        return "failed", "; ".join(failures)
    return "passed", f"over {during.n} frames: {low}; {dis or 'disagreement with the teacher unknown'}"
