"""Drift and probation decisions: figures in the reasons, behaviour at and around each limit, too few
teacher checks or frames to judge."""

import pytest

from ocap_daemon.errors import DaemonError
from ocap_daemon.watch import DriftConfig, ProbationConfig, Rates, drift_reason, probation_verdict

DRIFT = DriftConfig(min_checks=100, max_outside_share=0.10, max_low_confidence=0.30)
KEPT = frozenset({0, 3, 7})


def teacher(outside: int, total: int, outside_classes=(9,)):
    """A teacher histogram of ``total`` checks, ``outside`` of them split over ``outside_classes``."""
    hist = {0: (total - outside) // 2, 3: (total - outside) - (total - outside) // 2}
    per = outside // len(outside_classes)
    for i, k in enumerate(outside_classes):
        hist[k] = per + (outside - per * len(outside_classes) if i == 0 else 0)
    assert sum(hist.values()) == total
    return hist


# ---- drift -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("outside, total, drift", [
    (31, 310, False),         # exactly 10.0%: at the limit is fine
    (30, 310, False),
    (32, 310, True),          # 10.3%
    (44, 310, True),          # 14.2%
    (10, 100, False),
    (11, 100, True),
    (0, 5000, False),
])
def test_outside_share_around_the_limit(outside, total, drift):
    reason = drift_reason(teacher(outside, total), KEPT, 0, 1000, DRIFT)
    assert (reason is not None) == drift


def test_outside_reason_text():
    reason = drift_reason({0: 150, 3: 116, 9: 30, 5: 14}, KEPT, 0, 1000, DRIFT)
    assert reason == ("classes outside the kept set {0,3,7}: 14.2% of 310 teacher-checked frames "
                      "(limit 10.0%), mostly class 9")


def test_mostly_names_the_biggest_outside_class_ties_to_lowest_id():
    hist = {0: 80, 5: 8, 9: 12}
    assert drift_reason(hist, KEPT, 0, 0, DRIFT).endswith("mostly class 9")
    hist = {0: 80, 9: 10, 5: 10}
    assert drift_reason(hist, KEPT, 0, 0, DRIFT).endswith("mostly class 5")


@pytest.mark.parametrize("checks", [0, 1, 50, 99])
def test_too_few_teacher_checks_judges_nothing(checks):
    hist = {9: checks} if checks else {}           # all outside, and everything served low-confidence
    assert drift_reason(hist, KEPT, 1000, 1000, DRIFT) is None


def test_min_checks_is_inclusive():
    assert drift_reason({9: 100}, KEPT, 0, 0, DRIFT) is not None
    assert drift_reason({9: 99}, KEPT, 0, 0, DRIFT) is None


@pytest.mark.parametrize("low, n, drift", [
    (360, 1200, False),       # exactly 30.0%
    (361, 1200, True),
    (492, 1200, True),        # 41.0%
    (0, 1200, False),
    (0, 0, False),            # nothing served: no rate to judge
])
def test_low_confidence_around_the_limit(low, n, drift):
    reason = drift_reason(teacher(0, 200), KEPT, low, n, DRIFT)
    assert (reason is not None) == drift
    if drift:
        assert reason.startswith(f"low-confidence rate {100 * low / n:.1f}% of {n} served frames (limit 30.0%)")


def test_low_confidence_reason_text():
    assert drift_reason(teacher(0, 200), KEPT, 492, 1200, DRIFT) == \
        "low-confidence rate 41.0% of 1200 served frames (limit 30.0%)"


def test_both_failures_are_reported():
    reason = drift_reason(teacher(44, 310), KEPT, 492, 1200, DRIFT)
    assert reason is not None
    first, second = reason.split("; ")
    assert first.startswith("classes outside the kept set {0,3,7}: 14.2%")
    assert second.startswith("low-confidence rate 41.0%")


def test_kept_may_be_a_plain_set():
    assert drift_reason({0: 50, 1: 50}, {0, 1}, 0, 0, DRIFT) is None
    assert drift_reason({0: 50, 1: 50}, {0}, 0, 0, DRIFT).endswith("mostly class 1")


@pytest.mark.parametrize("bad, match", [
    (dict(min_checks=0), "min_checks"), (dict(max_outside_share=1.5), "max_outside_share"),
    (dict(max_low_confidence=-0.1), "max_low_confidence"),
])
def test_drift_config_rejects_bad_values(bad, match):
    kw = dict(min_checks=100, max_outside_share=0.1, max_low_confidence=0.3)
    kw.update(bad)
    with pytest.raises(DaemonError, match=match):
        DriftConfig(**kw)


# ---- probation -------------------------------------------------------------------------------------------

PROB = ProbationConfig(max_low_confidence_rise=0.10, max_disagreement=0.10)
BASE = Rates(n=5000, low_confidence_share=0.20)


@pytest.mark.parametrize("n, verdict", [(0, "pending"), (499, "pending"), (500, "passed"), (10_000, "passed")])
def test_pending_until_min_frames(n, verdict):
    got, why = probation_verdict(BASE, Rates(n, 0.21, 0.02), PROB, min_frames=500)
    assert got == verdict
    if verdict == "pending":
        assert why == f"{n} of 500 frames served so far"


def test_pending_wins_over_bad_figures():
    assert probation_verdict(BASE, Rates(10, 0.9, 0.9), PROB, 500)[0] == "pending"


@pytest.mark.parametrize("during, verdict", [
    (0.30, "passed"),          # rise of exactly 10 points
    (0.2999, "passed"),
    (0.3001, "failed"),
    (0.45, "failed"),
    (0.05, "passed"),          # getting better is fine
])
def test_low_confidence_rise_around_the_limit(during, verdict):
    assert probation_verdict(BASE, Rates(1000, during, None), PROB, 500)[0] == verdict


def test_a_rise_exactly_at_the_limit_passes_despite_float_rounding():
    assert 0.4 - 0.3 > 0.1                               # 0.10000000000000003
    assert probation_verdict(Rates(1000, 0.3), Rates(1000, 0.4), PROB, 500)[0] == "passed"


@pytest.mark.parametrize("disagreement, verdict", [
    (None, "passed"), (0.0, "passed"), (0.10, "passed"), (0.1001, "failed"), (0.5, "failed"),
])
def test_disagreement_around_the_limit(disagreement, verdict):
    assert probation_verdict(BASE, Rates(1000, 0.2, disagreement), PROB, 500)[0] == verdict


def test_failed_reasons_carry_figures():
    got, why = probation_verdict(BASE, Rates(1000, 0.45, 0.02), PROB, 500)
    assert (got, why) == ("failed", "low-confidence share 20.0% -> 45.0% (+25.0 points, limit +10.0)")
    got, why = probation_verdict(BASE, Rates(1000, 0.2, 0.14), PROB, 500)
    assert (got, why) == ("failed", "disagreement with the teacher 14.0% (limit 10.0%)")
    got, why = probation_verdict(BASE, Rates(1000, 0.45, 0.14), PROB, 500)
    assert got == "failed" and why.count("; ") == 1 and "45.0%" in why and "14.0%" in why


def test_passed_summary_carries_figures():
    got, why = probation_verdict(BASE, Rates(1200, 0.131, 0.032), PROB, 500)
    assert got == "passed"
    assert why == ("over 1200 frames: low-confidence share 20.0% -> 13.1% (-6.9 points, limit +10.0); "
                   "disagreement with the teacher 3.2% (limit 10.0%)")
    got, why = probation_verdict(BASE, Rates(1200, 0.25, None), PROB, 500)
    assert got == "passed" and why.endswith("+5.0 points, limit +10.0); disagreement with the teacher unknown")


@pytest.mark.parametrize("bad, match", [
    (dict(max_low_confidence_rise=-0.1), "max_low_confidence_rise"), (dict(max_disagreement=2.0), "max_disagreement"),
])
def test_probation_config_rejects_bad_values(bad, match):
    kw = dict(max_low_confidence_rise=0.1, max_disagreement=0.1)
    kw.update(bad)
    with pytest.raises(DaemonError, match=match):
        ProbationConfig(**kw)
