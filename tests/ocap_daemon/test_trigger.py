"""The trigger's start conditions on a stand-in serving plane (tests/ocap_daemon/fake_serving.py) and an
injected clock: no onnxruntime, no sleeps, milliseconds per case. Each case sets what the serving plane
reports and checks the trigger's verdict and the reason it gives; the same trigger runs on a real Server
in test_controller.py."""

import dataclasses

import pytest

from ocap_daemon import stability
from ocap_daemon.config import Config
from ocap_daemon.trigger import DAY, MAX_CRASHES, Trigger, plan_of, quantized
from ocap_service.event_kinds import Event
from tests.ocap_daemon.fake_serving import FakeServing, Model

MIX = {0: 500, 3: 300, 7: 200}


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _config(**personalize) -> Config:
    c = Config.defaults()
    r = dataclasses.replace
    p = dict(rule="personalize", min_samples_per_class=8, cooldown=60.0, daily_cap=2, max_serving_p99=0.05,
             min_free_memory=0, max_temperature=1e9)
    p.update(personalize)
    return r(c, stability=r(c.stability, window=10.0, windows=3, min_predictions=50),
             personalize=r(c.personalize, **p))


@pytest.fixture
def rig():
    clock = Clock()
    serving = FakeServing(clock)
    cfg = {"now": _config()}
    trigger = Trigger(lambda: cfg["now"], serving, clock)
    return trigger, serving, clock, cfg


def _stable(serving, fill: int = 40, held: int = 20) -> None:
    serving.windows = [dict(MIX)] * 3
    serving.cache = {"train": {k: fill for k in MIX}, "val": {k: held for k in MIX}}


def test_a_stable_mix_with_a_full_cache_starts_on_its_classes(rig):
    trigger, serving, _, _ = rig
    _stable(serving)
    ok, why, plan = trigger.evaluate()
    assert ok and why.startswith("stable 3/3"), why
    assert plan.classes == (0, 3, 7) and plan.class_freqs == {0: 0.5, 3: 0.3, 7: 0.2}


@pytest.mark.parametrize("windows", [
    [{0: 490, 3: 305, 7: 205}, {0: 515, 3: 290, 7: 195}, {0: 505, 3: 300, 7: 195, 5: 10}],
    [{0: 51, 3: 29, 7: 20}, {0: 47, 3: 32, 7: 21}, {0: 52, 3: 28, 7: 20}],
])
def test_the_class_shares_of_a_plan_do_not_follow_a_windows_noise(windows):
    """The same mix, windows cut at other moments: the same shares (they weigh the channels kept)."""
    plan = plan_of(windows, stability.Stability(True, 3, 3, frozenset({0, 3, 7}), 0.01, ""))
    assert plan.class_freqs == {0: 0.5, 3: 0.3, 7: 0.2}
    assert plan.outside_share == (0.01 if 5 in windows[-1] else 0.0)    # 0.3 %: half a step, not none


def test_shares_are_quantized_to_their_step():
    assert [quantized(s, 0.02) for s in (0.0, 0.003, 0.055, 0.061, 0.069, 0.071)] == [0.0, 0.01, 0.06, 0.06, 0.06, 0.08]


@pytest.mark.parametrize("change,reason", [
    (lambda s, c: setattr(s, "windows", [dict(MIX)] * 2), "not stable 2/3 (only 2 windows so far, needs 3)"),
    (lambda s, c: setattr(s, "windows", [{0: 500, 3: 300, 7: 200}, {1: 900, 2: 100}, dict(MIX)]), "1/3"),
    (lambda s, c: s.cache["train"].update({7: 3}), "cache holds 3/8 samples of class 7"),
    (lambda s, c: setattr(s, "p99_ms", 80.0), "serving p99 80.0 ms over 50.0 ms"),
    (lambda s, c: setattr(s, "_served", Model("k3", [0, 3, 7])), "the served model already keeps {0,3,7}"),
    (lambda s, c: c.update(now=_config(enabled=False)), "personalization is disabled in the config"),
])
def test_each_condition_that_holds_a_start_says_why(rig, change, reason):
    trigger, serving, _, cfg = rig
    _stable(serving)
    change(serving, cfg)
    ok, why, _ = trigger.evaluate()
    assert not ok and reason in why, why


def test_the_cooldown_holds_unless_forced_and_ends(rig):
    trigger, serving, clock, _ = rig
    _stable(serving)
    trigger.cool_down(60.0)
    ok, why, _ = trigger.evaluate()
    assert not ok and why == "cooling down for 60 s more"
    assert trigger.evaluate(force=True)[0]
    clock.t += 61
    assert trigger.evaluate()[0]


def test_the_daily_cap_counts_recorded_starts_and_its_own(rig):
    trigger, serving, clock, _ = rig
    _stable(serving)
    serving.record(Event.PERSONALIZE_STARTED)                # one in the events table
    trigger.started()                                        # one whose event write failed: only the trigger knows
    trigger.started()
    ok, why, _ = trigger.evaluate()
    assert not ok and why == "daily cap of 2 personalizations reached"
    assert trigger.evaluate(force=True)[0]
    clock.t += DAY + 1                                       # a day later both have aged out
    assert trigger.evaluate()[0]


def test_the_search_waits_for_held_back_images_and_says_how_many(rig):
    trigger, serving, _, cfg = rig
    cfg["now"] = _config(rule="search", max_loss=1.0)
    floor, target = trigger.held_back_needed(3)
    _stable(serving, held=(floor - 1) // 3)
    ok, why, _ = trigger.evaluate()
    assert not ok and why == f"cache holds {3 * ((floor - 1) // 3)}/{floor} held-back samples of {{0,3,7}}"
    _stable(serving, held=target)
    assert trigger.evaluate()[0]


def test_crashes_in_a_row_back_off_doubling_and_hold_after_the_third(rig):
    trigger, serving, clock, _ = rig
    _stable(serving)
    waits = [trigger.crashed(60.0, "SIGSEGV in stage finetune") for _ in range(MAX_CRASHES)]
    assert waits == [60.0, 120.0, 240.0]
    clock.t += 1000
    ok, why, _ = trigger.evaluate()
    assert not ok and why.startswith("personalization held after 3 worker crashes in a row (last: SIGSEGV")
    assert trigger.evaluate(force=True)[0]
    trigger.no_crash()
    assert trigger.evaluate()[0] and trigger.crash_note() == ""
