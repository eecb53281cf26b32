"""The operating-point search and what it stands on: marks in small layers, usage ranking, levels that
meet a MAC budget for every scorer, floors and positional protection without BatchNorm, progressive
pruning that replays, and a search that returns the smallest level within budget with its path."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from ocap_core.build import load_model
from ocap_core.data import load_dataset
from ocap_core.errors import OcapError
from ocap_core.finetune import FinetuneSpec
from ocap_core.measure import count_macs
from ocap_core.package import open_package
from ocap_core.personalize import check_enough, level_masks
from ocap_core.preprocess import preprocess
from ocap_core.prune_spec import PruneSpec
from ocap_core.scorers import SCORERS, ScoreSpec, marks_per_image, score
from ocap_core.search import check_judgeable, prune_copy, prune_further, search
from ocap_core.search_spec import SearchSpec
from ocap_core.structural import PrunableModel, replay_history
from ocap_core.train import predict_logits
from ocap_core.zoo import get_config

pytestmark = [pytest.mark.torch, pytest.mark.slow]


class NoBatchNorm(nn.Module):
    """A user's net without BatchNorm: protection must come from position, not from BN layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def fmnist():
    test = load_dataset("fashion-mnist", "test")
    return test


def _base(name):
    pkg = open_package(name)
    model = load_model(pkg)
    return pkg, model, tuple(pkg.card.input.shape), get_config(pkg.card.arch["name"]).classifier


def _table(model, x, scorer="ocap"):
    with torch.no_grad():
        pred = predict_logits(model, x).argmax(1).numpy()
    return score(scorer, model, x, pred, 10, ScoreSpec(keep_share=0.05, images_per_class=30)), pred


@pytest.mark.parametrize("width,share,expected", [(16, 0.05, 1), (64, 0.05, 3), (128, 0.05, 6), (64, 0.01, 1)])
def test_small_layers_mark_channels(width, share, expected):
    # the reference marks int-quantile-many minus one: none at all in a 16-wide layer at r = 0.05
    assert marks_per_image(width, share) == expected


def test_a_16_wide_layer_marks_a_channel_for_every_image(fmnist):
    pkg, model, shape, _ = _base("fmnist-resnet20")           # its first stage is 16 wide
    x = torch.from_numpy(preprocess(fmnist.x[:40], pkg.card.input))
    table, _ = _table(model, x)
    assert table.width("bn1") == 16
    assert table.hits["bn1"].sum() == pytest.approx(table.n.sum())     # one mark per image in that layer


@pytest.mark.parametrize("model_name", ["fmnist-resnet20", "fmnist-cnn"])
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_target_macs_lands_within_5_percent_for_every_scorer(fmnist, model_name, scorer):
    pkg, model, shape, clf = _base(model_name)
    x = torch.from_numpy(preprocess(fmnist.x[:120], pkg.card.input))
    table, _ = _table(model, x, scorer)
    cls = [0, 2, 6]
    spec = PruneSpec(scorer=scorer, target_macs=4.0).resolve(get_config(pkg.card.arch["name"]).family)
    levels = _levels(pkg, model, shape, clf, table, cls, spec)
    for target in (2.0, 4.0):
        pruned, _ = prune_copy(model, clf, shape, levels.at(target, exact=True), cls)
        ratio = count_macs(model, shape) / count_macs(pruned, shape)
        assert target <= ratio <= 1.05 * target, (scorer, target, ratio)


def test_levels_nest_and_progressive_pruning_replays(fmnist):
    pkg, model, shape, clf = _base("fmnist-resnet20")
    x = torch.from_numpy(preprocess(fmnist.x[:120], pkg.card.input))
    table, _ = _table(model, x)
    cls = [1, 8]
    spec = PruneSpec().resolve("resnet")
    levels = level_masks(model, PrunableModel(model, shape, clf), table, cls, spec, clf, shape, {1: 0.7, 8: 0.3})
    a, b = levels.at(2.0), levels.at(6.0)
    assert all(not (b[r] & ~a[r]).any() for r in a)                   # a higher level keeps a subset
    step1, h1 = prune_copy(model, clf, shape, a, cls)
    step2, h2 = prune_further(step1, clf, shape, a, b)
    direct, _ = prune_copy(model, clf, shape, b, cls)
    assert count_macs(step2, shape) == count_macs(direct, shape)
    rebuilt = replay_history(load_model(pkg), shape, h1 + h2)
    rebuilt.load_state_dict(step2.state_dict(), strict=True)
    xb = x[:16]
    assert torch.allclose(predict_logits(rebuilt, xb), predict_logits(step2, xb), atol=1e-5)
    with pytest.raises(OcapError, match="not nested"):
        prune_further(step2, clf, shape, b, a)


def test_floors_and_first_conv_hold_on_a_model_without_batchnorm(fmnist):
    torch.manual_seed(0)
    model, shape = NoBatchNorm().eval(), (1, 28, 28)
    x = torch.from_numpy(preprocess(fmnist.x[:100], open_package("fmnist-cnn").card.input))
    table, _ = _table(model, x)
    cls = [0, 1, 2]
    spec = PruneSpec().resolve("generic")
    pm = PrunableModel(model, shape, "fc")
    levels = level_masks(model, pm, table, cls, spec, "fc", shape, None)
    masks = levels.masks(levels.counts(levels.removable))            # everything at its floor
    assert masks["c1"].all()                                        # the conv nearest the input stays whole
    assert masks["c2"].sum() == max(spec.min_width, int(np.ceil(spec.min_share * 32)))
    assert masks["c3"].sum() == 16          # the classifier's input: 4 per class, 12, rounded above 8 to 16
    assert levels.ceiling() > 5
    free = level_masks(model, pm, table, cls, replace(spec, round_to=1), "fc", shape, None)
    assert free.masks(free.counts(free.removable))["c3"].sum() == 4 * len(cls)


def _data(fmnist, pkg, classes, n_train=96, n_val=48):
    idx = np.flatnonzero(np.isin(fmnist.y, classes))
    x = torch.from_numpy(preprocess(fmnist.x[idx[:n_train + n_val]], pkg.card.input))
    return x[:n_train], x[n_train:]


def _levels(pkg, model, shape, clf, table, classes, spec=None):
    """The search's levels for a shipped model, with the default spec resolved for its family."""
    spec = spec or PruneSpec().resolve(get_config(pkg.card.arch["name"]).family)
    return level_masks(model, PrunableModel(model, shape, clf), table, classes, spec, clf, shape, None)


def _setup(fmnist, classes, name="fmnist-cnn"):
    """A base, its held-back split of ``classes``, the restricted teacher's logits and the search's levels."""
    pkg, model, shape, clf = _base(name)
    x_tr, x_val = _data(fmnist, pkg, classes)
    t_tr, t_val = predict_logits(model, x_tr)[:, classes], predict_logits(model, x_val)[:, classes]
    table, _ = _table(model, x_tr)
    levels = _levels(pkg, model, shape, clf, table, classes)
    return model, shape, clf, (x_tr, t_tr, x_val, t_val), levels, count_macs(model, shape)


def test_search_returns_the_smallest_level_within_budget_and_its_path(fmnist):
    cls = [1, 8]
    model, shape, clf, (x_tr, t_tr, x_val, t_val), levels, base_macs = _setup(fmnist, cls)
    pkg = open_package("fmnist-cnn")

    def measure(m):     # a known loss curve: 0.5 pp up to 3.5x fewer MACs, 5 pp beyond
        return 0.995 if base_macs / count_macs(m, shape) < 3.5 else 0.95

    ss = SearchSpec(max_loss=1.0, levels=(1.5, 2.0, 3.0, 4.0, 6.0), time_budget=3600, step_epochs=1,
                    polish=False)     # the time budget is not under test: it must not end the search early
    res = search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val, ss, FinetuneSpec(epochs=1),
                 measure=measure)
    # the first level over budget is trained longer once (a retry), then the midpoint of the reductions
    # reached (over 3.5x: over budget too; halved when the 4.0 level's rounding lands it on the failed
    # masks, as on this model), then the search stops
    acc, mid = res.path[2]["mac_reduction"], (res.path[2]["mac_reduction"] * res.path[4]["mac_reduction"]) ** 0.5
    assert [p["level"] for p in res.path[:5]] == [1.5, 2.0, 3.0, 4.0, 4.0]
    assert res.path[5]["level"] in (pytest.approx(mid, abs=1e-3), pytest.approx((acc * mid) ** 0.5, abs=1e-3))
    assert [p["accepted"] for p in res.path] == [True, True, True, False, False, False]
    assert [p["retry"] for p in res.path] == [False] * 4 + [True, False] and res.path[4]["epochs"] == 3
    assert res.level == 3.0 and res.stopped == "over_budget" and res.agreement == 0.995
    ladder = res.path[:5]
    assert all(a["macs"] > b["macs"] for a, b in zip(ladder, ladder[1:]) if not b["retry"])
    assert res.path[2]["macs"] > res.path[5]["macs"] > res.path[4]["macs"]        # the midpoint: between
    assert count_macs(res.model, shape) == res.path[2]["macs"]
    assert all(set(p) >= {"macs", "mac_reduction", "agreement", "loss_pp", "seconds"} for p in res.path)
    rebuilt = replay_history(load_model(pkg), shape, res.history)
    rebuilt.load_state_dict(res.model.state_dict(), strict=True)

    with pytest.raises(OcapError, match=r"no operating point .* within 0\.1 points .*\(tried 1\.\d+x: -1\.00 pp") as e:
        search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val,
               SearchSpec(max_loss=0.1, levels=(1.5, 2.0), time_budget=3600, step_epochs=1, polish=False),
               FinetuneSpec(epochs=1), measure=lambda m: 0.99)
    assert e.value.path and not any(p["accepted"] for p in e.value.path)      # what was tried, for the record


class StandInCascade:
    """What the search asks of a cascade judge (``point``), with a known cost curve: the specialist at r
    times fewer MACs costs 1/r of the base's time, and a fallback share that grows with r (a stand-in for
    the policy's test; tests/ocap_core/test_cascade.py and the CLI test judge real cascades)."""

    def __init__(self, base_macs, share_of):
        self.base_macs, self.share_of, self.seen = base_macs, share_of, []

    def point(self, model, macs):
        r = self.base_macs / macs
        share = self.share_of(r)
        self.seen.append(r)
        return {"accepted": share < 1, "tau": 0.9, "fallback_share": share, "loss_pp": 0.5, "loss_se_pp": 0.1,
                "latency_ms": 1 / r, "base_latency_ms": 1.0, "alone_cost": 1 / r, "cost": 1 / r + share}


def test_with_a_fallback_the_search_keeps_the_cheapest_point_and_goes_on_while_within_budget(fmnist):
    """Alone, every level is over budget; as a cascade each is within, at a cost per frame that falls
    to about 3x and rises beyond: every level is a step of the ladder (within the budget as a cascade),
    those that cost more than the best so far are marked not cheaper, and the result is the cheapest
    of them with its threshold. A level whose cascade cannot keep the budget ends the ladder."""
    cls = [1, 8]
    model, shape, clf, (x_tr, t_tr, x_val, t_val), levels, base_macs = _setup(fmnist, cls)
    judge = StandInCascade(base_macs, lambda r: 0.05 * r * r / 4 if r < 6.2 else 1.0)
    res = search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val,
                 SearchSpec(max_loss=1.0, levels=(1.5, 2.0, 3.0, 4.0, 6.0), time_budget=3600, step_epochs=1,
                            polish=False, retry_factor=1),
                 FinetuneSpec(epochs=1), measure=lambda m: 0.95, cascade=lambda xj: judge)
    ladder = [p for p in res.path if p["level"] in (1.5, 2.0, 3.0, 4.0, 6.0)]
    costs = [p["cascade"]["cost"] for p in ladder]
    assert [p["accepted_as"] for p in ladder[:-1]] == ["cascade"] * (len(ladder) - 1) and not ladder[-1]["accepted"]
    best = min(costs[:-1])
    assert res.cascade is not None and res.cascade["cost"] == best
    first_dearer = next(i for i, p in enumerate(ladder) if p.get("cheaper") is False)
    assert costs[first_dearer] >= min(costs[:first_dearer]) * 0.95               # within, not cheaper: a step
    assert any(p["cheaper"] is False for p in ladder[first_dearer:-1]) and res.stopped == "over_budget"
    assert all(p["loss_pp"] > 1.0 for p in res.path)                          # alone: every level over
    # measured no faster than the base: a level within the budget alone is not an operating point
    slow = StandInCascade(base_macs, lambda r: 1.0)
    slow.point = lambda m, macs: dict(StandInCascade.point(slow, m, macs), alone_cost=0.97, accepted=False)
    with pytest.raises(OcapError, match=r"cheaper than the base: the levels within it \(1\.\d+x\) ran no 5 % faster"):
        search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val,
               SearchSpec(max_loss=1.0, levels=(1.5,), time_budget=3600, step_epochs=1, polish=False),
               FinetuneSpec(epochs=1), measure=lambda m: 0.995, cascade=lambda xj: slow)
    # no fallback wanted: a search without one raises, as it did
    with pytest.raises(OcapError, match="no operating point"):
        search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val,
               SearchSpec(max_loss=1.0, levels=(1.5,), time_budget=3600, step_epochs=1, polish=False),
               FinetuneSpec(epochs=1), measure=lambda m: 0.95)


def test_too_few_images_names_every_short_class():
    names = [f"c{i}" for i in range(10)]
    check_enough({1: 40, 3: 40}, 32, names)
    with pytest.raises(OcapError, match=r"classes 3 \(c3\): 12, 7 \(c7\): 4; at least 32"):
        check_enough({1: 40, 3: 12, 7: 4}, 32, names)


@pytest.mark.parametrize("bad", [dict(max_loss=-1), dict(levels=(2.0, 1.5)), dict(levels=(1.0,)),
                                 dict(time_budget=0)])
def test_bad_search_specs_are_refused(bad):
    with pytest.raises(OcapError):
        SearchSpec(**bad)


def test_too_few_judged_images_for_the_budget_are_refused_before_any_training():
    check_judgeable(300, SearchSpec(max_loss=1.0))
    with pytest.raises(OcapError, match=r"299 held-back images .* a 1-point budget needs 300 \(600 held back\).*"
                                        r"a loss budget of 1\.5 points"):
        check_judgeable(299, SearchSpec(max_loss=1.0))
    with pytest.raises(OcapError, match=r"42 held-back images .* loss budget of 7\.5 points"):
        check_judgeable(42, SearchSpec(max_loss=2.5))
    check_judgeable(42, SearchSpec(max_loss=7.5))       # what the refusal offered holds


@pytest.mark.parametrize("accepted, failed, expected", [(1.54, 2.46, 1.946), (1.565, 2.138, None), (1.0, 1.5, 1.225),
                                                        (3.0, 12.0, 6.0)])
def test_the_midpoint_is_taken_between_the_reductions_reached(accepted, failed, expected):
    from ocap_core.search import midpoint

    got = midpoint(accepted, failed)
    assert (got is None) if expected is None else got == pytest.approx(expected, abs=1e-3)


def test_a_failed_level_is_followed_by_its_midpoint(fmnist):
    cls = [1, 8]
    model, shape, clf, (x_tr, t_tr, x_val, t_val), levels, base_macs = _setup(fmnist, cls)

    def measure(m):     # within budget below 8x fewer MACs (the 8.0 level reaches a little more: over)
        return 0.995 if base_macs / count_macs(m, shape) < 8.0 else 0.95

    res = search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val,
                 SearchSpec(max_loss=1.0, levels=(1.5, 8.0), time_budget=3600, step_epochs=1, polish=False),
                 FinetuneSpec(epochs=1), measure=measure)
    first, failed = res.path[0]["mac_reduction"], res.path[1]["mac_reduction"]
    assert [p["accepted"] for p in res.path] == [True, False, False, True]      # 1.5, 8 twice, the midpoint
    assert first < res.path[3]["mac_reduction"] < 8.0 < failed
    assert res.path[3]["level"] == pytest.approx((first * failed) ** 0.5, abs=1e-3)
    assert count_macs(res.model, shape) == res.path[3]["macs"] and res.stopped == "over_budget"


@pytest.mark.parametrize("model_name, cls", [("fmnist-cnn", [1, 8]), ("fmnist-cnn", [0, 2, 6]),
                                             ("fmnist-resnet20", [0, 2, 6])])
def test_a_level_reached_progressively_is_not_overshot(fmnist, model_name, cls):
    """Progressive pruning (a level's masks inside the accepted candidate's) lands no further past each
    level than the same level from the base does: the masks nest, rounding and give-back included."""
    pkg, model, shape, clf = _base(model_name)
    x = torch.from_numpy(preprocess(fmnist.x[np.isin(fmnist.y, cls)][:120], pkg.card.input))
    table, _ = _table(model, x)
    levels = _levels(pkg, model, shape, clf, table, cls)

    def reduction(masks):
        return levels.base_macs / count_macs(prune_copy(model, clf, shape, masks, cls)[0], shape)

    cur = levels.at(1.5)
    for level in (2.0, 3.0, 3.755, 5.0):
        if levels.ceiling() < level:
            break
        nxt = {r: m & cur[r] for r, m in levels.at(level).items()}
        assert all(not (nxt[r] & ~cur[r]).any() for r in cur)              # inside the candidate
        assert level <= reduction(nxt) <= max(reduction(levels.at(level)), reduction(cur)) * 1.001
        cur = nxt


def test_a_midpoint_that_rounds_onto_the_failed_masks_is_halved(fmnist):
    """The CNN on {T-shirt, pullover, shirt}: 1.5 reaches about 1.54x, 2.0 about 2.46x, and the midpoint
    (about 1.95x) rounds to the same 2.46x masks; the search tries a step half as large instead."""
    cls = [0, 2, 6]
    model, shape, clf, (x_tr, t_tr, x_val, t_val), levels, base_macs = _setup(fmnist, cls)
    res = search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val,
                 SearchSpec(max_loss=1.0, levels=(1.5, 2.0), time_budget=3600, step_epochs=1, polish=False),
                 FinetuneSpec(epochs=1), measure=lambda m: 0.995 if base_macs / count_macs(m, shape) < 2.2 else 0.95)
    first, failed = res.path[0]["mac_reduction"], res.path[1]["mac_reduction"]
    assert [p["accepted"] for p in res.path] == [True, False, False, True]
    assert first < res.path[3]["mac_reduction"] < 2.2 < failed
    assert res.path[3]["level"] < (first * failed) ** 0.5 - 0.05          # halved: below the plain midpoint


@pytest.mark.parametrize("model_name, family", [("fmnist-resnet20", "resnet"), ("fmnist-cnn", "cnn")])
def test_the_search_rounds_wide_layers_to_8_and_leaves_narrow_ones_free(fmnist, model_name, family):
    """Widths above 8 are multiples of 8 (onnxruntime's CPU kernels run others slowly: a ResNet-20 at
    1.5x fewer MACs with free widths ran slower than its base), narrower ones go down to their floors, so
    the ceiling stays far above what rounding every width to 8 allowed (the CNN: 8.4x)."""
    pkg, model, shape, clf = _base(model_name)
    cls = [2, 7]
    x = torch.from_numpy(preprocess(fmnist.x[np.isin(fmnist.y, cls)][:120], pkg.card.input))
    table, _ = _table(model, x)
    spec = PruneSpec().resolve(family)
    assert spec.round_to == 8 and PruneSpec(rule="personalize").resolve("resnet").round_to == 1   # fixed rule: as before
    levels = _levels(pkg, model, shape, clf, table, cls, spec)
    assert levels.ceiling() > 12
    narrow = 0
    for level in (1.5, 3.0, 8.0, 12.0):
        masks = levels.at(level)
        for g in levels.groups:
            n = int(masks[g.root].sum())
            assert g.root in levels.protected or n == g.width or n % 8 == 0 or n < 8, (level, g.root, n)
            narrow += n < 8
    assert narrow > 0                               # some layer went below 8 on the way up


def test_the_search_ends_when_its_epochs_are_spent_whatever_the_time(fmnist):
    """Work, not time, ends a search: a budget of 5 epochs at 2 a step trains 2 + 2 + 1 (the last step
    gets what is left) and stops with ``work_budget``, however long they took; no polish is left."""
    cls = [1, 8]
    model, shape, clf, (x_tr, t_tr, x_val, t_val), levels, base_macs = _setup(fmnist, cls)
    ss = SearchSpec(max_loss=1.0, levels=(1.5, 2.0, 3.0, 4.0, 6.0), time_budget=3600, work_epochs=5, step_epochs=2,
                    step_patience=10)
    res = search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val, ss, FinetuneSpec(epochs=3),
                 measure=lambda m: 0.999)
    assert [p["epochs"] for p in res.path] == [2, 2, 1] and res.stopped == "work_budget" and res.epochs == 5
    assert res.polish == {}
    with pytest.raises(OcapError):
        SearchSpec(work_epochs=0)
