"""Stability detector: JS distance against a direct numpy computation, the observed-set cut, the walk
over windows (exact streak lengths, what resets them, the reason text), the personalization trigger's
class-set checks, and a seeded multinomial camera whose mix is found stable, then changed."""

import math

import numpy as np
import pytest

from ocap_daemon.errors import DaemonError
from ocap_daemon.stability import (
    OTHER,
    Stability,
    StabilityConfig,
    assess,
    format_set,
    js_distance,
    observed_set,
    pool,
    worth_personalizing,
)

CFG = StabilityConfig(windows=3, min_predictions=200, coverage=0.95, min_share=0.02, js_threshold=0.1,
                      max_classes=8)


def cfg(**kw) -> StabilityConfig:
    base = dict(windows=3, min_predictions=100, coverage=0.95, min_share=0.02, js_threshold=0.1, max_classes=8)
    base.update(kw)
    return StabilityConfig(**base)


def reference_js(p, q):
    """JS distance written out directly: dense vectors over 0..max id, base-2 logs, 0 log 0 = 0."""
    size = max(list(p) + list(q)) + 1
    a, b = np.zeros(size), np.zeros(size)
    for k, n in p.items():
        a[k] = n
    for k, n in q.items():
        b[k] = n
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_a = np.where(a > 0, a * np.log2(a / m), 0.0).sum()
        kl_b = np.where(b > 0, b * np.log2(b / m), 0.0).sum()
    return math.sqrt(max(0.0, (kl_a + kl_b) / 2))


def random_hist(rng, classes=10, density=0.6, scale=50):
    ids = [k for k in range(classes) if rng.random() < density] or [int(rng.integers(classes))]
    return {k: int(rng.integers(1, scale)) for k in ids}


# ---- js_distance ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(25))
def test_js_matches_direct_numpy_and_is_a_symmetric_bounded_distance(seed):
    rng = np.random.default_rng(seed)
    p, q = random_hist(rng), random_hist(rng)
    d = js_distance(p, q)
    assert d == pytest.approx(reference_js(p, q), abs=1e-12)
    assert d == pytest.approx(js_distance(q, p), abs=1e-15)
    assert 0.0 <= d <= 1.0
    assert js_distance(p, p) == pytest.approx(0.0, abs=1e-7)
    scaled = {k: 3 * n for k, n in p.items()}           # only the mix matters, not the count
    assert js_distance(p, scaled) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("seed", range(10))
def test_js_triangle_inequality(seed):
    rng = np.random.default_rng(100 + seed)
    p, q, r = (random_hist(rng) for _ in range(3))
    assert js_distance(p, r) <= js_distance(p, q) + js_distance(q, r) + 1e-12


@pytest.mark.parametrize("p, q", [({0: 5}, {1: 5}), ({0: 1, 2: 9}, {1: 4, 3: 1}), ({7: 1000}, {3: 1})])
def test_js_disjoint_supports_is_one(p, q):
    assert js_distance(p, q) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("p, q", [({}, {0: 5}), ({0: 5}, {}), ({}, {}), ({0: 0}, {0: 5})])
def test_js_empty_histogram_is_one(p, q):
    assert js_distance(p, q) == 1.0


def test_js_known_value():
    # p = (1, 0), q = (1/2, 1/2): JSD = 1 - 3/4 log2 3 + ... computed by hand: 0.311278 bits
    jsd = 0.5 * (math.log2(1 / 0.75)) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert js_distance({0: 10}, {0: 5, 1: 5}) == pytest.approx(math.sqrt(jsd), abs=1e-12)
    assert jsd == pytest.approx(0.311278, abs=1e-6)


def test_js_negative_count_is_refused():
    with pytest.raises(ValueError, match="negative"):
        js_distance({0: -1}, {0: 1})


# ---- observed_set ------------------------------------------------------------------------------------

@pytest.mark.parametrize("hist, coverage, min_share, expected", [
    ({0: 50, 3: 30, 7: 15, 9: 5}, 0.95, 0.0, {0, 3, 7}),          # 95% reached exactly at the third class
    ({0: 50, 3: 30, 7: 14, 9: 6}, 0.95, 0.0, {0, 3, 7, 9}),       # 94% is not enough
    ({0: 50, 3: 30, 7: 20}, 0.5, 0.0, {0}),                       # first class alone reaches coverage
    ({0: 50, 3: 30, 7: 20}, 1.0, 0.0, {0, 3, 7}),
    ({0: 90, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 2}, 0.95, 0.02, {0, 9}),  # tail needed, too thin
    ({0: 90, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 2}, 0.95, 0.0, {0, 9, 1, 2, 3}),
    ({0: 97, 5: 2, 6: 1}, 0.99, 0.02, {0, 5}),                    # 5 at exactly 2% stays
    ({0: 97, 5: 2, 6: 1}, 0.99, 0.021, {0}),
    ({4: 10, 2: 10, 9: 10, 1: 70}, 0.8, 0.0, {1, 2}),              # ties go to the lower class id
    ({4: 10, 2: 10, 9: 10, 1: 70}, 0.9, 0.0, {1, 2, 4}),
    ({3: 0, 5: 10}, 1.0, 0.0, {5}),                               # a zero count is no class
    ({}, 0.95, 0.02, set()),
    ({1: 0}, 0.95, 0.02, set()),
])
def test_observed_set(hist, coverage, min_share, expected):
    assert observed_set(hist, coverage, min_share) == frozenset(expected)


def test_pool_sums_the_rest_under_other():
    assert pool({0: 5, 3: 2, 8: 1, 9: 4}, {0, 3}) == {0: 5, 3: 2, OTHER: 5}
    assert pool({0: 5}, {0, 3}) == {0: 5}
    assert format_set({7, 0, 3}) == "{0,3,7}" and format_set(()) == "{}"


# ---- StabilityConfig -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (dict(windows=1), "windows"), (dict(min_predictions=0), "min_predictions"),
    (dict(coverage=0.0), "coverage"), (dict(coverage=1.5), "coverage"), (dict(min_share=-0.1), "min_share"),
    (dict(js_threshold=0.0), "js_threshold"), (dict(js_threshold=1.2), "js_threshold"),
    (dict(max_classes=0), "max_classes"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(DaemonError, match=match):
        cfg(**bad)


# ---- assess --------------------------------------------------------------------------------------------

A = {0: 100, 3: 60, 7: 40}                       # set {0,3,7}
A2 = {0: 104, 3: 58, 7: 38}                      # same mix, tiny wobble
B = {0: 100, 3: 60, 7: 40, 5: 50}                # set {0,3,5,7}
SHIFT = {0: 40, 3: 120, 7: 40}                   # same set, mix moved: JS ~0.25
SMALL = {0: 50, 3: 30, 7: 19}                    # 99 predictions


@pytest.mark.parametrize("n", [2, 3, 5])
def test_stable_after_exactly_n_windows(n):
    c = cfg(windows=n)
    history = [A, A2] * n
    for k in range(1, n):
        s = assess(history[:k], c)
        assert not s.stable and s.streak == k and s.reason == f"only {k} windows so far, needs {n}"
    s = assess(history[:n], c)
    assert s.stable and s.streak == n and s.needed == n and s.reason == ""
    assert s.classes == frozenset({0, 3, 7})
    longer = assess(history[: n + 3], c)
    assert longer.stable and longer.streak == n            # the walk stops at the number needed


def test_set_change_resets_the_streak():
    s = assess([A, A2, A, B], CFG)
    assert not s.stable and s.streak == 1
    assert s.reason == "set changed {0,3,7} -> {0,3,5,7}"
    assert s.classes == frozenset({0, 3, 5, 7})
    s = assess([A, A2, A, B, B], CFG)
    assert not s.stable and s.streak == 2
    assert assess([A, A2, A, B, B, B], CFG).stable


def test_js_jump_resets_the_streak():
    d = js_distance(A, SHIFT)
    assert d > 0.2
    s = assess([A, A, SHIFT], CFG)
    assert not s.stable and s.streak == 1 and s.js == pytest.approx(d)
    assert s.reason == f"JS {d:.3f} > 0.100"
    s = assess([A, SHIFT, SHIFT], CFG)
    assert not s.stable and s.streak == 2 and s.js == 0.0
    # the same jump passes with a looser threshold
    assert assess([A, A, SHIFT], cfg(js_threshold=0.3)).stable


def test_js_exactly_at_threshold_breaks_the_run():
    d = js_distance(A, SHIFT)
    s = assess([A, A, SHIFT], cfg(js_threshold=d))
    assert not s.stable and s.streak == 1 and s.reason == f"JS {d:.3f} >= {d:.3f}"


@pytest.mark.parametrize("history, streak, reason", [
    ([A, A, SMALL], 0, "window has 99 predictions, needs 100"),
    ([A, SMALL, A], 1, "earlier window has 99 predictions, needs 100"),
    ([SMALL, A, A], 2, "earlier window has 99 predictions, needs 100"),
    ([A, A, {}], 0, "window has 0 predictions, needs 100"),
])
def test_a_small_window_breaks_the_run(history, streak, reason):
    s = assess(history, cfg())
    assert not s.stable and s.streak == streak and s.reason == reason


def test_min_predictions_boundary_counts():
    exactly = {0: 50, 3: 30, 7: 20}
    assert assess([exactly] * 3, cfg(min_predictions=100)).stable
    assert not assess([exactly] * 3, cfg(min_predictions=101)).stable


def test_tail_noise_is_pooled_but_its_weight_still_counts():
    # the same mix with a different sprinkle of rare misclassifications: raw JS is large, pooled JS is 0
    p = {0: 490, 3: 300, 7: 190, 1: 10, 2: 10}
    q = {0: 490, 3: 300, 7: 190, 8: 10, 9: 10}
    assert js_distance(p, q) == pytest.approx(math.sqrt(0.02))         # 2% on disjoint classes
    s = assess([p, q, p], CFG)
    assert s.stable and s.classes == frozenset({0, 3, 7}) and s.js == pytest.approx(0.0, abs=1e-7)
    # the tail growing from 2% to 6% (each class below min_share) is a change in the mix
    r = {0: 470, 3: 290, 7: 180, 1: 12, 2: 12, 4: 12, 5: 12, 6: 12}
    c = cfg(coverage=0.99, js_threshold=0.05)
    assert observed_set(p, c.coverage, c.min_share) == observed_set(r, c.coverage, c.min_share) == {0, 3, 7}
    d = js_distance(pool(p, {0, 3, 7}), pool(r, {0, 3, 7}))
    assert d > 0.08
    s = assess([p, p, r], c)
    assert not s.stable and s.streak == 1 and s.reason == f"JS {d:.3f} > 0.050"


def test_no_windows():
    s = assess([], CFG)
    assert s == Stability(False, 0, 3, frozenset(), None, "no windows yet")
    assert s.describe() == "not stable 0/3 (no windows yet), JS n/a, set {}"


def test_describe():
    stable = Stability(True, 3, 3, frozenset({7, 0, 3}), 0.0214, "")
    assert stable.describe() == "stable 3/3, JS 0.021, set {0,3,7}"
    s = assess([A, A2, A, B], CFG)
    assert s.describe() == f"not stable 1/3 (set changed {{0,3,7}} -> {{0,3,5,7}}), JS {s.js:.3f}, set {{0,3,5,7}}"
    s = assess([A, A, SMALL], CFG)
    assert s.describe().startswith("not stable 0/3 (window has 99 predictions, needs 200), JS 0.0")


# ---- worth_personalizing -------------------------------------------------------------------------------

@pytest.mark.parametrize("classes, served, ok, reason", [
    ({0, 3, 7}, None, True, ""),
    ({0, 3, 7}, [0, 3], True, ""),
    ({0, 3, 7}, [0, 3, 7, 9], True, ""),
    (set(), None, False, "no observed classes"),
    (set(range(10)), None, False, "set {0,1,2,3,4,5,6,7,8,9} covers all 10 classes"),
    (set(range(9)), None, False, "set {0,1,2,3,4,5,6,7,8} has 9 classes, more than max_classes 8"),
    (set(range(8)), None, True, ""),
    ({7, 3, 0}, (0, 3, 7), False, "the served model already keeps {0,3,7}"),
    ({0, 3, 7}, frozenset({0, 3, 7}), False, "the served model already keeps {0,3,7}"),
])
def test_worth_personalizing(classes, served, ok, reason):
    assert worth_personalizing(frozenset(classes), served, 10, CFG) == (ok, reason)


def test_worth_personalizing_max_classes_is_inclusive():
    assert worth_personalizing({0, 1, 2}, None, 10, cfg(max_classes=3)) == (True, "")
    assert worth_personalizing({0, 1, 2, 3}, None, 10, cfg(max_classes=3))[0] is False


# ---- a simulated camera --------------------------------------------------------------------------------

def mix(shares, classes=10, noise=0.01):
    """A class distribution: ``shares`` scaled to 1 - noise, noise spread evenly over the other classes."""
    others = [k for k in range(classes) if k not in shares]
    p = np.full(classes, noise / len(others))
    for k, s in shares.items():
        p[k] = s * (1 - noise)
    return p


def draw(rng, p, low=200, high=500):
    n = int(rng.integers(low, high + 1))
    return {k: int(v) for k, v in enumerate(rng.multinomial(n, p)) if v}


THREE = mix({0: 0.5, 3: 0.3, 7: 0.2})
FOUR = mix({0: 0.35, 3: 0.25, 5: 0.2, 7: 0.2})


def test_seeded_camera_is_found_stable_then_not_after_a_new_class():
    rng = np.random.default_rng(7)
    history = [draw(rng, THREE, 400) for _ in range(3)]          # 400-500: a false "not stable" is ~1% rare
    s = assess(history, CFG)
    assert s.stable and s.classes == frozenset({0, 3, 7}), s.describe()
    assert s.describe().startswith("stable 3/3, JS ")
    history.append(draw(rng, FOUR))
    s = assess(history, CFG)
    assert not s.stable and s.streak == 1 and s.classes == frozenset({0, 3, 5, 7})
    assert s.reason == "set changed {0,3,7} -> {0,3,5,7}"


def test_a_fixed_mix_is_stable_in_nearly_every_trial():
    """Sampling noise alone rarely breaks a run: over 60 seeded trials of 3 windows of 200-500
    predictions the set is always {0,3,7}, and the mix is judged stable in about 94% (55 of these 60;
    the bound leaves room for another numpy's sampler). Raw, unpooled JS passes only 26 of them.
    A new class is always caught at once."""
    stable = 0
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        history = [draw(rng, THREE) for _ in range(3)]
        assert all(observed_set(h, CFG.coverage, CFG.min_share) == {0, 3, 7} for h in history)
        stable += assess(history, CFG).stable
        after = assess(history + [draw(rng, FOUR)], CFG)
        assert not after.stable and after.streak == 1 and after.classes == {0, 3, 5, 7}
    assert stable >= 50
