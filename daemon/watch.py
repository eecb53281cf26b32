"""When to go back to the base model: drift while a pruned model serves, and probation after a deploy.

Pure decisions over counts the daemon has already read (teacher-checked class histograms, low-confidence
counts, per-version rates). No I/O, no clock. Limits are inclusive: a share exactly at its limit passes.
"""

from dataclasses import dataclass
from typing import AbstractSet, List, Mapping, Optional, Tuple

from .errors import DaemonError
from .stability import format_set

__all__ = ["DriftConfig", "drift_reason", "ProbationConfig", "Rates", "probation_verdict"]

# float differences of shares (0.3 - 0.2) land a hair off; a rise this close to its limit is at the limit
_EPS = 1e-9


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _check_share(name: str, x: float) -> None:
    if not 0 <= x <= 1:
        raise DaemonError(f"{name} must be in [0, 1], got {x}")


@dataclass(frozen=True)
class DriftConfig:
    """When a serving pruned model no longer fits what the camera sees.

    min_checks: teacher-checked frames a window needs before judging; max_outside_share: largest share of
    teacher predictions outside the kept classes; max_low_confidence: largest low-confidence share of the
    served frames.
    """

    min_checks: int
    max_outside_share: float
    max_low_confidence: float

    def __post_init__(self) -> None:
        if self.min_checks < 1:
            raise DaemonError(f"drift min_checks must be >= 1, got {self.min_checks}")
        _check_share("drift max_outside_share", self.max_outside_share)
        _check_share("drift max_low_confidence", self.max_low_confidence)


def drift_reason(teacher_hist: Mapping[int, int], kept: AbstractSet[int], served_low_conf: int, served_n: int,
                 cfg: DriftConfig) -> Optional[str]:
    """Why the pruned model should give way to the base model, or None when it still fits.

    ``teacher_hist``: the base model's predictions on the frames it checked in the window; the share of
    them outside ``kept`` is scene drift the pruned model cannot even name. ``served_low_conf`` of
    ``served_n`` served frames were low-confidence. With fewer than ``cfg.min_checks`` teacher checks
    nothing is judged (None): a handful of checks is noise. Both failures are reported, joined by "; ".
    """
    checks = sum(teacher_hist.values())
    if checks < cfg.min_checks:
        return None
    reasons: List[str] = []
    outside = {k: n for k, n in teacher_hist.items() if k not in kept and n > 0}
    share = sum(outside.values()) / checks
    if share > cfg.max_outside_share + _EPS:
        top = min(outside, key=lambda k: (-outside[k], k))
        reasons.append(f"classes outside the kept set {format_set(kept)}: {_pct(share)} of {checks} "
                       f"teacher-checked frames (limit {_pct(cfg.max_outside_share)}), mostly class {top}")
    if served_n > 0:
        low = served_low_conf / served_n
        if low > cfg.max_low_confidence + _EPS:
            reasons.append(f"low-confidence rate {_pct(low)} of {served_n} served frames "
                           f"(limit {_pct(cfg.max_low_confidence)})")
    return "; ".join(reasons) if reasons else None


@dataclass(frozen=True)
class ProbationConfig:
    """How much worse a newly deployed model may do than the one before it.

    max_low_confidence_rise: largest rise of the low-confidence share (a fraction, 0.1 = 10 points);
    max_disagreement: largest share of teacher-checked frames where the new model disagreed.
    """

    max_low_confidence_rise: float
    max_disagreement: float

    def __post_init__(self) -> None:
        _check_share("probation max_low_confidence_rise", self.max_low_confidence_rise)
        _check_share("probation max_disagreement", self.max_disagreement)


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
