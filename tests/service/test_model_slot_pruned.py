"""A pruned package serves its K outputs as base class ids (needs torch to make the package)."""

import pytest

from ocap_core.data import load_dataset
from service.model_slot import ModelSlot, load_model
from tests.helpers import run_cli

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_pruned_outputs_map_to_base_class_ids(tmp_path):
    out = tmp_path / "cnn-18"
    r = run_cli("prune", "--model", "fmnist-cnn", "--classes", "8,1", "--epochs", "3", "--samples-per-class", "64",
                "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    slot = ModelSlot(load_model("fmnist-cnn"))
    assert slot.swap(str(out))[0]
    test = load_dataset("fashion-mnist", "test").of_classes([1, 8])
    pred = slot.current().predict(test.x)
    assert set(pred.class_ids.tolist()) <= {1, 8} and (pred.class_ids == test.y).mean() >= 0.95
