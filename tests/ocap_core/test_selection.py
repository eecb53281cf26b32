"""The streaming sample selectors (numpy only)."""

import numpy as np
import pytest

from ocap_core.errors import OcapError
from ocap_core.selection import (
    EntropySelector,
    KLSelector,
    ReservoirSelector,
    kl_score,
    log_softmax,
    make_selector,
    select_stream,
    split_for,
)


def _brute_kl(stored_feats, f):
    d = len(f)
    q = np.exp(log_softmax(f))
    total = 0.0
    for s in stored_feats:
        p = np.exp(log_softmax(s))
        total += np.sum(p * (np.log(p) - np.log(q)))
    return total / (d * len(stored_feats))


def test_kl_score_matches_the_formula():
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(5, 12))
    f = rng.normal(size=12)
    logp = log_softmax(stored)
    negent = np.sum(np.exp(logp) * logp, axis=1)
    assert kl_score(logp, negent, log_softmax(f)) == pytest.approx(_brute_kl(stored, f), rel=1e-10)


def _offered(name: str, capacity: int, n: int, classes: int, seed: int):
    """A ``name`` selector offered items 0..n-1 of classes ``i % classes`` with random logits and features."""
    rng = np.random.default_rng(seed)
    sel = make_selector(name, capacity=capacity, seed=0)
    for i in range(n):
        sel.offer(i, rng.normal(size=8), i % classes, rng.normal(size=4))
    return sel


@pytest.mark.parametrize("name", ["kl", "random", "entropy"])
def test_buffers_are_bounded_per_class(name):
    sel = _offered(name, capacity=16, n=2000, classes=3, seed=1)
    picked = sel.selected()
    assert set(picked) == {0, 1, 2} and all(len(v) == 16 for v in picked.values())
    assert all(len(set(v)) == 16 and all(x % 3 == k for x in v) for k, v in picked.items())


@pytest.mark.parametrize("name", ["kl", "random", "entropy"])
def test_evict_and_discard_thin_one_class(name):
    sel = _offered(name, capacity=8, n=40, classes=2, seed=2)
    b = sel.buffers[1]
    weakest = b.items[int(np.argmin(b.scores))] if b.scores else b.items[0]
    gone = sel.evict(1)
    assert gone == weakest and sel.held(1) == 7 and sel.held(0) == 8
    assert len(b.scores) in (0, 7) and len(b.logp) in (0, 7)      # every column stays aligned
    kept = sel.selected()[0][3]
    assert sel.discard(0, kept) and kept not in sel.selected()[0] and not sel.discard(0, kept)
    assert sel.evict(5) is None and sel.held(5) == 0


def test_kl_first_sample_is_a_sentinel_and_replacements_are_capped():
    rng = np.random.default_rng(2)
    sel = KLSelector(capacity=8, divisor=2, max_replacements=5, seed=0)
    results = [sel.offer(i, rng.normal(size=6) * 3, 0) for i in range(500)]
    b = sel.buffers[0]
    assert b.scores[0] == 1.0 and b.items[0] == 0         # never replaced
    assert b.replacements == 5 and sum(r.evicted is not None for r in results) == 5
    assert sel.full(0)
    sel.reset_replacements()
    assert not sel.full(0)


def test_selection_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(400, 10))
    runs = [select_stream(KLSelector(capacity=10, seed=s), list(range(400)), feats, np.zeros(400, int))
            for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def _clustered_stream(seed, n=3000, d=16, clusters=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 4
    share = np.array([0.72] + [0.04] * (clusters - 1))        # one dominant mode, seven rare ones
    labels = rng.choice(clusters, size=n, p=share)
    return centres[labels] + rng.normal(size=(n, d)) * 0.5, labels


def test_kl_selection_is_more_diverse_than_random_on_clusters():
    """Offered a stream dominated by one cluster, KL keeps more of the rare clusters than a reservoir."""
    kl_cov, rnd_cov = [], []
    for seed in range(5):
        feats, clusters = _clustered_stream(seed)
        ids, cls = list(range(len(feats))), np.zeros(len(feats), int)
        for sel, out in ((KLSelector(capacity=16, divisor=2, seed=seed), kl_cov),
                         (ReservoirSelector(capacity=16, seed=seed), rnd_cov)):
            chosen = select_stream(sel, ids, feats, cls)[0]
            share_rare = np.mean(clusters[chosen] != 0)
            out.append(share_rare)
    assert np.mean(kl_cov) > np.mean(rnd_cov) + 0.1, (kl_cov, rnd_cov)


def test_entropy_selector_keeps_the_most_uncertain():
    sel = EntropySelector(capacity=3)
    confident = [10.0, 0.0, 0.0]
    for i in range(10):
        sel.offer(i, None, 0, confident)
    sel.offer("flat", None, 0, [1.0, 1.0, 1.0])
    assert "flat" in sel.selected()[0]
    with pytest.raises(OcapError, match="needs the model's logits"):
        sel.offer(99, None, 0, None)


def test_reservoir_is_roughly_uniform():
    hits = np.zeros(100)
    for seed in range(300):
        sel = ReservoirSelector(capacity=10, seed=seed)
        for i in range(100):
            sel.offer(i, None, 0)
        hits[sel.selected()[0]] += 1
    assert hits[:50].sum() == pytest.approx(hits[50:].sum(), rel=0.1)


def test_validation_split_is_stable_and_about_a_fifth():
    ids = [f"img-{i}" for i in range(5000)]
    vals = [split_for(s) for s in ids]
    assert vals == [split_for(s) for s in ids]
    assert 0.17 < vals.count("val") / len(ids) < 0.23


def test_bad_selector_options():
    with pytest.raises(OcapError, match="unknown sample selector"):
        make_selector("best", 8)
    with pytest.raises(OcapError, match="capacity"):
        KLSelector(capacity=0)


@pytest.mark.parametrize("split,share,outside", [("train", 0.0, 2), ("train", 0.5, 2), ("val", 0.0, 0), ("val", 0.2, 1),
                                                  ("val", 0.375, 3)])
def test_outside_images_join_by_split(split, share, outside):
    from ocap_core.selection import with_outside

    ids = np.array([0, 5, 3, 0, 9, 3, 5, 7, 5, 3])      # observed 0 and 3: five images; five others
    got = with_outside(ids, [0, 3], split, share, seed=1)
    assert got.tolist() == sorted(got.tolist())
    assert set(np.flatnonzero(np.isin(ids, [0, 3]))) <= set(got.tolist())
    # training: one observed class's worth (5 // 2); held back: the stream's share (5 * share / (1 - share))
    assert int((~np.isin(ids[got], [0, 3])).sum()) == outside


def test_outside_share_must_leave_room():
    from ocap_core.selection import outside_quota

    with pytest.raises(OcapError, match="outside share"):
        outside_quota(10, 2, "val", 1.0)
    assert outside_quota(0, 2, "val", 1.0) == outside_quota(0, 2, "train", 1.0) == 0     # nothing observed
