"""A pruned package serves its K outputs as base class ids: the checked-in candidate the engine made
for {Trouser, Bag} (tests/data/fmnist-cnn-1-8) swapped in over the shipped CNN, on real test images."""

from ocap_core.data import load_dataset
from ocap_service.model_slot import ModelSlot, load_model
from tests.ocap_daemon.conftest import CANDIDATE_1_8


def test_pruned_outputs_map_to_base_class_ids():
    slot = ModelSlot(load_model("fmnist-cnn"))
    assert slot.swap(str(CANDIDATE_1_8))[0]
    assert slot.current().class_ids == [1, 8]
    test = load_dataset("fashion-mnist", "test").of_classes([1, 8])
    pred = slot.current().predict(test.x)
    assert set(pred.class_ids.tolist()) <= {1, 8} and (pred.class_ids == test.y).mean() >= 0.95
