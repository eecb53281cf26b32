"""``ocap demo`` on any package and data: the mix it picks, and every bad input refused with one clear
line before ocapd starts (the whole loop itself runs in tests/examples/test_digits.py and the README)."""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from ocap_core.errors import OcapError
from ocap_daemon.demo import demo_mix
from tests.helpers import ROOT, captured

NAMES = [f"c{k}" for k in range(10)]


def _args(**kw):
    base = dict(data="mine.npz", classes=None, shares=None, drift_class=None, seed=0)
    return argparse.Namespace(**dict(base, **kw))


def test_fashion_mnist_keeps_the_readme_mix_and_other_data_gets_a_seeded_pick_of_present_classes():
    y = np.repeat(np.arange(10), 10)
    assert demo_mix(y, _args(data="fashion-mnist"), NAMES) == ([0, 3, 7], [0.5, 0.3, 0.2], 9)
    y = np.repeat([2, 4, 5, 8], 10)                        # only four classes have images
    classes, shares, extra = demo_mix(y, _args(), NAMES)
    assert set(classes) | {extra} == {2, 4, 5, 8} and len(classes) == 3 and shares == [0.5, 0.3, 0.2]
    assert demo_mix(y, _args(), NAMES) == (classes, shares, extra)          # seeded


@pytest.mark.parametrize("kw,message", [
    (dict(classes="2,4", drift_class="4"), "--drift-class 4 must be a class outside the observed ones"),
    (dict(classes="2,4,5", shares="0.5,0.5"), "--shares needs one positive share per class"),
    (dict(classes="2,4,12"), "class 12 is not one of the model's 10 classes"),
    (dict(classes="2,4,7"), "class 7 (c7) has 0 images in the data"),
    (dict(classes="2,x"), "--classes takes comma-separated class ids"),
])
def test_bad_mixes_are_refused_naming_what_is_wrong(kw, message):
    with pytest.raises(OcapError, match=message.replace("(", r"\(").replace(")", r"\)")):
        demo_mix(np.repeat([2, 4, 5, 8], 10), _args(**kw), NAMES)


def test_too_few_classes_present_for_a_demo():
    with pytest.raises(OcapError, match="the data has 3 classes with 4\\+ images; the demo needs 4"):
        demo_mix(np.repeat([2, 4, 5], 10), _args(), NAMES)


def test_data_that_does_not_fit_the_model_is_refused_before_ocapd_starts(tmp_path):
    np.savez(tmp_path / "small.npz", x=np.zeros((40, 16, 16), np.uint8), y=np.arange(40) % 10)
    r = captured([sys.executable, "-m", "ocap_cli", "demo", "--data", str(tmp_path / "small.npz")],
                 cwd=str(ROOT), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "small.npz: images are 16x16 (1 channel), the model fmnist-cnn takes 28x28 (1 channel)" in r.stderr
    assert "ocapd is up" not in r.stdout


def test_the_demo_worker_runs_at_the_niceness_and_limits_asked_for(tmp_path):
    from ocap_daemon.config import load_config
    from ocap_daemon.demo import demo_config

    for nice in (0, 19):
        ini = tmp_path / f"ocap-{nice}.ini"
        ini.write_text(demo_config(tmp_path, "fmnist-cnn", 120.0, nice=nice), encoding="utf-8")
        assert load_config(ini).personalize.nice == nice
    ini.write_text(demo_config(tmp_path, "fmnist-cnn", 120.0, budget=160.0, wall_limit=270.0), encoding="utf-8")
    p = load_config(ini).personalize
    assert (p.time_budget, p.wall_limit) == (160.0, 270.0)
    ini.write_text(demo_config(tmp_path, "fmnist-cnn", 120.0, budget=160.0, wall_limit=60.0), encoding="utf-8")
    assert load_config(ini).personalize.wall_limit == 160.0          # never below the budget
    r = captured([sys.executable, "-m", "ocap_cli", "demo", "--nice", "20"],
                 cwd=str(ROOT))
    assert r.returncode == 2 and "--nice" in r.stderr


@pytest.mark.parametrize("rate", [40.0, 120.0, 300.0])
@pytest.mark.parametrize("speed", [1.0, 2.0, 4.0])
def test_the_drift_window_holds_the_checks_a_drift_verdict_needs(rate, speed):
    """At speed 2 and 120 frames/s the window held 90 teacher checks of the 100 a verdict needs, and the
    demo never declared the drift it showed (the digits walk-through found it)."""
    from ocap_daemon.demo import MIN_CHECKS, TEACHER_SHARE, demo_config, drift_window

    window = drift_window(rate, speed)
    assert window * TEACHER_SHARE * rate >= MIN_CHECKS * 1.5
    assert window <= max(6, math.ceil(1.5 * MIN_CHECKS / (TEACHER_SHARE * rate)))    # no longer than needed
    assert f"window = {window}s\nmin_checks = {MIN_CHECKS}" in demo_config(Path("/tmp/w"), "fmnist-cnn", rate, speed)


def test_the_demo_report_names_classes_shows_the_search_and_cuts_details_at_words(tmp_path):
    """Plots with class names, the search's levels and staggered event labels; event details cut at a
    word, not mid-word."""
    pytest.importorskip("matplotlib")
    from ocap_core.package import resolve_model
    from ocap_daemon.demo_report import _class_names, write_report
    from ocap_daemon.status import cut_words
    from ocap_service.event_kinds import Event

    path = str(resolve_model("fmnist-cnn"))
    rows = [dict(model=m, version="v", classes=[0, 3, 7], accuracy=a, macs=macs, latency_ms=0.2, size_mb=0.5,
                 path=path) for m, a, macs in (("base", 0.91, 21.9e6), ("base, told", 0.95, 21.9e6),
                                              ("personalized", 0.945, 4e6))]
    summary = dict(classes=[0, 3, 7], drift_class=9, requests=6, failed=0, served_by_daemon=6, models=rows,
                   search={"max_loss": 1.0, "stopped": "ladder",
                           "path": [{"mac_reduction": 2.0, "loss_pp": 0.2, "accepted": True},
                                    {"mac_reduction": 5.5, "loss_pp": 0.6, "accepted": True},
                                    {"mac_reduction": 8.0, "loss_pp": 2.5, "accepted": False}]})
    t0 = 1000.0
    requests = [(t0 + i, 0, k, 0.9, True, 1.0) for i, k in enumerate([0, 3, 7, 0, 9, 9])]
    long = "word " * 60
    events = [{"ts": t0 + i, "kind": k, "detail": {"why": long}} for i, k in
              enumerate([Event.PERSONALIZE_STARTED, Event.GATE, Event.DEPLOY, Event.PROBATION_PASSED, Event.DRIFT])]
    text = write_report(tmp_path / "r", summary, requests, events, t0, t0 + 4).read_text(encoding="utf-8")
    assert _class_names(summary)[3] == "Dress"
    assert (tmp_path / "r" / "frequencies.png").stat().st_size > 10_000
    assert (tmp_path / "r" / "accuracy_vs_macs.png").stat().st_size > 10_000
    assert "why=word word" in text and " …" in text and "wor …" not in text
    assert cut_words("a b c", 200) == "a b c" and cut_words("alpha beta gamma", 12) == "alpha beta …"


def test_a_data_set_too_small_for_the_budget_is_refused_at_the_start_with_what_would_do():
    """1,500 images of three classes (750 replayed): too few held back to judge a 1-point budget; the
    demo says so before ocapd starts, with the images or the budget that would do."""
    from ocap_core.agreement import judged_images_needed
    from ocap_daemon.demo import data_cannot_show

    why = data_cannot_show(1.0, {0: 250, 3: 250, 7: 250})
    assert "a 1-point budget needs" in why and "--max-loss" in why, why
    allowed = float(why.split("--max-loss ")[1].split()[0])
    assert data_cannot_show(allowed, {0: 250, 3: 250, 7: 250}) == ""        # what it suggests is enough
    assert data_cannot_show(1.0, {0: 500, 3: 500, 7: 500}) == ""            # the README's demo: enough
    assert str(2 * judged_images_needed(1.0)) in why


def test_a_handful_of_images_is_refused_without_an_impossible_budget():
    from ocap_daemon.demo import data_cannot_show

    why = data_cannot_show(1.0, {0: 2, 3: 2, 7: 2})
    assert "use a data set with about" in why and "--max-loss" not in why, why


@pytest.mark.parametrize("row, text", [
    ({"mac_reduction": 3.03, "loss_pp": 0.57, "accepted": True, "accepted_as": "alone"}, "3.0x -0.57 pp ok"),
    ({"mac_reduction": 2.5, "loss_pp": 0.86, "accepted": True, "accepted_as": "cascade",
      "cascade": {"accepted": True, "fallback_share": 0.059, "loss_pp": 0.005}}, "2.5x -0.86 pp, with 6% to the base -0.01 pp ok"),
    ({"mac_reduction": 4.0, "loss_pp": 1.2, "accepted": True, "accepted_as": "cascade", "cheaper": False,
      "cascade": {"accepted": True, "fallback_share": 0.16, "loss_pp": 0.28}}, "4.0x -1.20 pp, with 16% to the base -0.28 pp within, not cheaper"),
    ({"mac_reduction": 4.31, "loss_pp": 2.0, "accepted": False, "cascade": {"accepted": False}}, "4.3x -2.00 pp over"),
])
def test_the_summary_says_how_each_level_fared_alone_and_as_a_cascade(row, text):
    from ocap_daemon.demo import level_text

    assert level_text(row) == text


def test_the_demo_holds_back_what_the_budget_needs_and_leaves_enough_to_train():
    from ocap_daemon.demo import HELD_BACK_SHARE, MAX_HELD_BACK_SHARE, data_cannot_show, held_back_share

    fashion = {0: 500, 3: 500, 7: 500}
    assert HELD_BACK_SHARE < held_back_share(1.0, fashion) < MAX_HELD_BACK_SHARE      # 600 of 1,500, and a margin
    assert held_back_share(5.0, fashion) == HELD_BACK_SHARE                           # the default is enough
    digits = {5: 90, 6: 91, 9: 91}
    assert "fewer than the 48 each class needs to train on" in data_cannot_show(5.0, digits)
    assert data_cannot_show(7.5, digits) == ""
