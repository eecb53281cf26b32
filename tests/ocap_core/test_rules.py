"""Selection rules and group masks on hand-made tables (numpy only)."""

from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import pytest

from ocap_core.errors import OcapError
from ocap_core.importance import ImportanceTable
from ocap_core.rules import (
    apply_rule,
    group_masks,
    layer_scores,
    matched_masks,
    min_keep,
    rule_cap,
    rule_hybrid,
    rule_personalize,
)


@dataclass
class G:                      # the fields of structural.ChannelGroup that the rules read
    root: str
    width: int
    members: Dict[str, np.ndarray] = field(default_factory=dict)
    grouped: bool = False


def table():
    # layer a: 4 channels x 3 classes; channel 0 serves class 0, 1 serves classes 1 and 2, 2 serves all, 3 none
    hits = {"a": np.array([[5, 0, 0], [0, 4, 2], [5, 5, 5], [0, 0, 0]], float),
            "b": np.array([[0, 0, 5], [5, 0, 0]], float)}
    return ImportanceTable("ocap", ["a", "b"], hits, np.array([5.0, 5.0, 5.0]),
                           {k: v * 2 for k, v in hits.items()})


def test_personalize_keeps_channels_of_any_observed_class():
    m = rule_personalize(table(), [0])
    assert m["a"].tolist() == [True, False, True, False] and m["b"].tolist() == [False, True]
    assert rule_personalize(table(), [1, 2])["a"].tolist() == [False, True, True, False]


def test_cap_counts_classes_over_all_columns():
    m = rule_cap(table(), [0], threshold=2)
    assert m["a"].tolist() == [False, True, True, False]
    with pytest.raises(OcapError, match="soft class count needs the 'cap' scorer"):
        rule_cap(table(), [0], soft=True)


def test_hybrid_weights_by_class_share():
    m = rule_hybrid(table(), [0, 1], freqs={0: 0.9, 1: 0.1}, theta=0.5)
    assert m["a"].tolist() == [True, False, True, False]
    assert rule_hybrid(table(), [0, 1], theta=0.0)["a"].tolist() == rule_personalize(table(), [0, 1])["a"].tolist()


def test_group_masks_or_members_and_top_up():
    # group r: layers a (4 channels) and b (2 channels mapped to root channels 2 and 3)
    g = G("r", 4, {"a": np.arange(4), "b": np.array([3, 2])})
    keep = {"a": np.array([True, False, False, False]), "b": np.array([True, False])}
    out = group_masks([g], keep, layer_scores(table(), [0]))
    assert out["r"].tolist() == [True, False, False, True]          # b's channel 0 is root channel 3
    out = group_masks([g], {"a": np.zeros(4, bool)}, layer_scores(table(), [1]), min_width=2)
    assert out["r"].sum() == 2 and out["r"][1] and out["r"][2]      # topped up by score over S
    assert group_masks([g], keep, layer_scores(table(), [0]), protected=["r"])["r"].all()
    out = group_masks([g], keep, layer_scores(table(), [0]), round_to=3)
    assert out["r"].sum() == 3


def test_class_agnostic_masks():
    g = G("r", 4, {"a": np.arange(4)})
    scores = {"a": np.array([0.1, 0.9, 0.5, 0.3])}
    assert matched_masks([g], scores, {"r": 2})["r"].tolist() == [False, True, True, False]
    assert min_keep(10, 1, 0.25, 4) == 4 and min_keep(3, 8) == 3


def test_class_agnostic_tables_refuse_class_rules():
    t = table()
    t.class_agnostic = True
    with pytest.raises(OcapError, match="class-agnostic"):
        apply_rule("personalize", t, [0])
    with pytest.raises(OcapError, match="unknown rule"):
        apply_rule("magic", table(), [0])


def test_table_merge_save_load(tmp_path):
    t = table()
    t.side["soft_count"] = {"a": np.arange(4.0), "b": np.ones(2)}
    merged = t.merge(t)
    assert np.array_equal(merged.hits["a"], 2 * t.hits["a"]) and np.array_equal(merged.M("a"), t.M("a"))
    t.save(tmp_path / "t.npz")
    back = ImportanceTable.load(tmp_path / "t.npz")
    assert back.layers == t.layers and back.scorer == "ocap"
    assert np.array_equal(back.hits["b"], t.hits["b"]) and np.array_equal(back.side["soft_count"]["a"], np.arange(4.0))
    empty = ImportanceTable.empty("ocap", {"a": 3}, 4)
    assert np.array_equal(empty.M("a"), np.zeros((3, 4)))          # no division by zero
