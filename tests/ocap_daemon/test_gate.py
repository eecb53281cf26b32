"""The gate on a real pruned candidate (made by the engine) and real held-back frames: it passes a good
one and names the reason for each refusal."""

import dataclasses
import shutil

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import read_card, write_card
from ocap_daemon.gate import GateConfig, check
from ocap_service.model_slot import load_model
from tests.ocap_daemon.test_store import corrupt


@pytest.fixture(scope="module")
def candidate(pruned_1_8):
    return pruned_1_8


@pytest.fixture(scope="module")
def base():
    return load_model("fmnist-cnn")


@pytest.fixture(scope="module")
def held():
    test = load_dataset("fashion-mnist", "test")
    return test.x[np.isin(test.y, [1, 8])][:200], test.x[np.isin(test.y, [0, 6])][:50]


def test_a_good_candidate_passes_with_its_figures(candidate, base, held):
    v = check(str(candidate), base, base, held[0], GateConfig(0.9, 1.0, 40))
    assert v.passed, v.reason
    assert v.figures["classes"] == [1, 8] and v.figures["agreement"] >= 0.9 and v.figures["speedup"] > 1.0
    assert v.model is not None and v.model.class_ids == [1, 8]
    # the reason is read from the recorded figures, digit for digit
    assert v.reason == f"agreement {100 * v.figures['agreement']:.1f}%, {v.figures['speedup']:.2f}x faster"


@pytest.mark.parametrize("cfg,reason", [(GateConfig(1.0, 1.0, 20), "agrees with the teacher on"),
                                        (GateConfig(0.5, 50.0, 20), "as fast as the served model")])
def test_thresholds_refuse(candidate, base, held, cfg, reason):
    v = check(str(candidate), base, base, held[0], cfg)
    assert not v.passed and reason in v.reason and 190 <= v.figures["samples"] <= 200
    f = v.figures
    assert f"{100 * f['agreement']:.1f}%" in v.reason or f"{f['speedup']:.2f}x" in v.reason


def test_a_broken_or_lying_candidate_is_refused(candidate, base, held, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(str(candidate), str(broken))
    corrupt(broken)
    assert "does not load" in check(str(broken), base, base, held[0], GateConfig()).reason
    liar = tmp_path / "liar"
    shutil.copytree(str(candidate), str(liar))
    write_card(liar, dataclasses.replace(read_card(liar), class_ids=[1]))       # the ONNX still has 2 outputs
    reason = check(str(liar), base, base, held[0], GateConfig()).reason
    assert reason.startswith("does not load") and "has 2 outputs but the card names 1 classes [1]" in reason
    v = check(str(candidate), base, base, held[1], GateConfig())
    assert not v.passed and "none of the 50 held-back samples" in v.reason


def test_frames_the_base_answers_with_another_class_are_judged_against_its_answer_among_the_kept(candidate, base,
                                                                                                held):
    images = np.concatenate(held)                  # 200 of trousers and bags, 50 T-shirts and shirts
    v = check(str(candidate), base, base, images, GateConfig(0.0, 1.0, 20))
    outside = ~np.isin(base.predict(images).class_ids, [1, 8])
    assert v.figures["samples"] == 250 and v.figures["outside"] == int(outside.sum()) >= 45
    told = np.asarray([1, 8])[base.predict(images).probs[:, [1, 8]].argmax(1)]
    assert v.figures["hard_agreement"] == round(float(np.mean(v.model.predict(images).class_ids == told)), 4)


def test_a_model_already_loaded_is_judged_as_it_is(candidate, base, held, tmp_path):
    loaded = load_model(str(candidate))
    v = check(str(tmp_path / "not-loaded-again"), base, base, held[0], GateConfig(0.9, 1.0, 20), loaded=loaded)
    assert v.passed and v.model is loaded, v.reason


def test_a_cascade_is_judged_end_to_end_and_its_base_answers_what_it_doubts(candidate, base, held, tmp_path):
    """The same specialist with the base as fallback: on frames of its classes mixed with others (as
    the held-back cache holds them), the frames it doubts go to the base, whose answers cost only what
    they risk, so it agrees with the teacher more than alone; the figures say how many fell back."""
    from ocap_core.cascade_package import with_fallback
    from ocap_core.package import open_package

    frames = np.concatenate([held[0][:150], held[1][:30]])
    pkg = with_fallback(open_package(str(candidate)), open_package("fmnist-cnn"), 0.95, tmp_path / "c")
    alone = check(str(candidate), base, base, frames, GateConfig(0.0, 1.0, 60))
    both = check(str(pkg.path), base, base, frames, GateConfig(0.0, 1.0, 60), shared_base=base)
    assert load_model(str(pkg.path), shared_base=base).base is base    # the server's base session answers for it
    assert 0 < both.figures["fallback_share"] < 1 and both.figures["tau"] == 0.95
    assert both.figures["agreement"] > alone.figures["agreement"]
    assert "fallback_share" not in alone.figures
