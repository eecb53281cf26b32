"""A specialist with the base as its fallback (torch-free): the threshold rule, what answers cost,
cascade packages made from the checked-in candidate and the shipped CNN, and ``ocap eval`` of one."""

import json

import numpy as np
import pytest

from ocap_core.cascade import (
    FALLBACK_ONNX,
    MIN_OUTSIDE_SHARE,
    answer_costs,
    at_threshold,
    choose_threshold,
    cost_per_frame,
    cross_fitted,
    fallback_answer,
    fallback_costs,
    falls_back,
    macs_per_frame,
    outside_weight,
)
from ocap_core.cascade_package import with_fallback
from ocap_core.data import load_dataset
from ocap_core.errors import OcapError
from ocap_core.evaluate import evaluate_package
from ocap_core.package import Card, open_package
from tests.helpers import cli

CANDIDATE = "tests/data/fmnist-cnn-1-8"


def test_falls_back_below_the_threshold_only():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]])
    assert falls_back(p, 0.0).tolist() == [False, False, False]          # the specialist alone
    assert falls_back(p, 0.6).tolist() == [False, False, True]
    assert falls_back(p, 1.01).tolist() == [True, True, True]


def test_answer_costs_charge_a_class_outside_the_kept_ones_in_full():
    ref = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])                  # the base restricted to {1, 8}
    costs = answer_costs(ref, np.array([1, 1, 3]), [1, 8])
    assert costs == pytest.approx([0.0, 0.4, 0.6])                        # agree; hesitant miss; outside


def test_the_bases_own_answer_costs_only_where_it_names_another_class_and_doubts_it():
    full = np.array([[0.7, 0.2, 0.1, 0.0],       # names kept class 0: the restricted base's answer too
                     [0.05, 0.05, 0.9, 0.0],     # sure it is class 2 (not kept): little at risk
                     [0.3, 0.1, 0.6, 0.0]])      # class 2, but 0.4 on the kept ones
    assert fallback_costs(full, [0, 1]) == pytest.approx([0.0, 0.1, 0.4])
    assert fallback_costs(full, [0, 1], hard=True).tolist() == [0.0, 0.0, 0.0]
    assert fallback_costs(np.array([[0.25, 0.3, 0.45, 0.0]]), [0, 1], hard=True).tolist() == [1.0]


def test_the_outside_weight_is_the_prior_odds_of_one_other_class_against_one_kept():
    # 3 kept classes of 10, 5 % of frames sent elsewhere: (0.05 / 7) / (0.95 / 3)
    assert outside_weight(0.05, 3, 10) == pytest.approx((0.05 / 7) / (0.95 / 3))
    assert outside_weight(0.0, 3, 10) == outside_weight(MIN_OUTSIDE_SHARE, 3, 10) > 0    # never none at all
    assert outside_weight(0.3, 10, 10) == 1.0 and outside_weight(0.9, 1, 10) <= 1.0


def test_the_base_names_another_class_only_when_it_is_that_much_surer():
    full = np.array([[0.3, 0.1, 0.6, 0.0],       # another class, not 50x surer than kept class 0
                     [0.01, 0.0, 0.99, 0.0],     # 99x surer: a frame of another class indeed
                     [0.2, 0.5, 0.3, 0.0]])
    assert fallback_answer(full, [0, 1], 1.0).tolist() == [2, 2, 1]      # the whole head, unweighted
    assert fallback_answer(full, [0, 1], 0.02).tolist() == [0, 2, 1]
    assert fallback_costs(full, [0, 1], 0.02) == pytest.approx([0.0, 0.01, 0.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_chosen_threshold_is_the_lowest_that_keeps_the_budget(seed):
    rng = np.random.default_rng(seed)
    n = 400
    conf = rng.uniform(0.5, 1.0, n)
    spec = (rng.uniform(0, 1, n) > conf).astype(float)      # the specialist misses where it is unsure
    base = np.zeros(n)                                      # the base is the reference
    pt = choose_threshold(conf, spec, base, max_loss=2.0, z=1.0, margins=(1.0,))
    assert pt is not None and pt.loss_pp + 2 * pt.loss_se_pp <= 2.0 + 1e-9
    assert 0 < pt.share < 1 and pt == at_threshold(conf, spec, base, pt.tau)
    lower = np.sort(conf[conf < pt.tau])[-1]                # one frame fewer falling back misses the margin
    worse = at_threshold(conf, spec, base, lower)
    assert worse.loss_pp + 2 * worse.loss_se_pp > 2.0
    assert choose_threshold(conf, spec, spec, max_loss=2.0) is None       # a fallback no better cannot help
    # too few frames for the margin: the largest margin they allow
    few = choose_threshold(conf[:60], spec[:60], base[:60], max_loss=2.0)
    assert few is not None and few.loss_pp + 2 * few.loss_se_pp > 2.0 >= few.loss_pp + few.loss_se_pp - 1e-9
    alone = choose_threshold(conf, np.zeros(n), base, max_loss=2.0)
    assert alone.tau == 0 and alone.share == 0                           # a good specialist needs no fallback


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_cross_fitted_threshold_is_judged_on_frames_that_did_not_choose_it(seed):
    rng = np.random.default_rng(seed)
    n = 600
    conf = rng.uniform(0.5, 1.0, n)
    spec = (rng.uniform(0, 1, n) > conf).astype(float)
    base = np.zeros(n)
    pt = cross_fitted(conf, spec, base, max_loss=2.0)
    even, odd = choose_threshold(conf[0::2], spec[0::2], base[0::2], 2.0), choose_threshold(conf[1::2], spec[1::2], base[1::2], 2.0)
    assert pt.tau == max(even.tau, odd.tau) and pt.share == pytest.approx(float((conf < pt.tau).mean()))
    # each fold at the other's threshold: not the loss at the kept threshold on all frames
    crossed = np.concatenate([np.where(conf[0::2] < odd.tau, 0.0, spec[0::2]), np.where(conf[1::2] < even.tau, 0.0, spec[1::2])])
    assert pt.loss_pp == pytest.approx(100 * crossed.mean())
    # a fold flattered by frames the specialist happens to get right gives its threshold no say over its own verdict
    lucky = spec.copy()
    lucky[0::2] = 0.0
    flattered = cross_fitted(conf, lucky, base, max_loss=2.0)
    assert flattered.loss_pp == pytest.approx(100 * lucky[1::2].mean() / 2, abs=1e-9)   # odd frames judged at tau 0
    assert cross_fitted(conf, spec, spec, max_loss=2.0) is None
    with pytest.raises(OcapError, match="1 frames"):
        cross_fitted(conf[:1], spec[:1], base[:1], max_loss=2.0)


def test_cost_and_macs_per_frame():
    assert cost_per_frame(0.1, 0.5, 0.2) == pytest.approx(0.2)
    assert macs_per_frame(1e6, 8e6, 0.25) == pytest.approx(3e6)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    out = tmp_path_factory.mktemp("cascade") / "c"
    return with_fallback(open_package(CANDIDATE), open_package("fmnist-cnn"), 0.9, out)


def test_a_cascade_package_carries_the_base_and_verifies(cascade):
    base = open_package("fmnist-cnn").card
    c = cascade.card
    assert c.cascade["fallback"]["version"] == base.version and c.cascade["tau"] == 0.9
    assert c.files[FALLBACK_ONNX] == base.files["model.onnx"] and c.version.endswith("-c0900")
    fb = c.fallback_card()
    assert fb.class_ids == list(range(10)) and fb.version == base.version
    again = Card.from_dict(json.loads((cascade.path / "card.json").read_text()))
    assert again.cascade == c.cascade


@pytest.mark.parametrize("change,message", [
    (lambda d: d["cascade"].update(tau=1.5), "tau must be a number in [0, 1]"),
    (lambda d: d["cascade"]["fallback"].update(class_ids=[0, 2]), "must include the model's [1, 8]"),
    (lambda d: d["cascade"]["fallback"].update(sha256="0" * 64), "sha256 must be that of the package's fallback.onnx"),
    (lambda d: d["cascade"].update(rule="entropy"), "unknown rule 'entropy'"),
    (lambda d: d["cascade"].update(outside_weight=0), "outside_weight must be a number in (0, 1]"),
])
def test_bad_cascade_cards_are_refused_by_name(cascade, change, message):
    d = json.loads((cascade.path / "card.json").read_text())
    change(d)
    with pytest.raises(OcapError, match="cascade") as e:
        Card.from_dict(d, where="x/card.json")
    assert message in str(e.value)


def test_a_cascade_of_a_cascade_is_refused(cascade, tmp_path):
    with pytest.raises(OcapError, match="is a cascade already"):
        with_fallback(cascade, open_package("fmnist-cnn"), 0.5, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_eval_of_a_cascade_reports_its_fallback_share_and_expected_macs(cascade):
    test = load_dataset("fashion-mnist", "test")
    res = evaluate_package(cascade, test, [1, 8], latency_runs=20)
    alone = evaluate_package(open_package(CANDIDATE), test, [1, 8], latency_runs=0)
    base_macs = cascade.card.metrics["base_macs"]
    assert 0 < res["fallback_share"] < 0.2 and res["specialist_macs"] == alone["macs"]
    assert res["macs"] == pytest.approx(alone["macs"] + res["fallback_share"] * base_macs)
    assert res["latency_ms"] > res["specialist_latency_ms"] and "restricted_accuracy" not in res
    # the base answers the frames the specialist doubts, over all ten classes
    assert res["accuracy"] != alone["accuracy"]
    r = cli("eval", "--model", str(cascade.path), "--classes", "1,8", "--latency-runs", "5")
    assert r.returncode == 0 and "cascade: the base (fmnist-cnn-" in r.stdout, r.stdout + r.stderr
