"""The checked-in test candidate (tests/data/fmnist-cnn-1-8) is what scripts/make_test_candidate.py
makes: the engine's output for the shipped CNN and {Trouser, Bag}, not a hand-made file. Its digest may
differ on another CPU (float rounding in training), so the shape of the model is compared."""

import importlib.util

import pytest

from ocap_core.package import open_package
from tests.helpers import ROOT
from tests.ocap_daemon.conftest import CANDIDATE_1_8

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_the_checked_in_candidate_is_what_its_script_makes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_test_candidate", ROOT / "scripts" / "make_test_candidate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    made = open_package(str(script.make(tmp_path / "cand"))).card
    shipped = open_package(str(CANDIDATE_1_8)).card
    assert made.class_ids == shipped.class_ids == [1, 8]
    assert (made.name, made.parent, made.outputs, made.input) == (shipped.name, shipped.parent, shipped.outputs,
                                                                  shipped.input)
    for key in ("macs", "params", "base_macs"):
        assert made.metrics[key] == shipped.metrics[key], key
    assert list(made.files) == list(shipped.files) == ["model.onnx"]
    assert shipped.metrics["mac_reduction"] > 1.5 and "make_test_candidate.py" in shipped.provenance["made_by"]
