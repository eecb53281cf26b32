"""ModelSlot on the shipped packages (torch-free): predictions in the base label space, hot-swap
under concurrent requests, refused swaps that leave the served model alone."""

import threading

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.errors import OcapError
from ocap_core.package import open_package
from ocap_service.model_slot import ModelSlot, load_model
from tests.helpers import wait_until


@pytest.fixture(scope="module")
def test_images():
    test = load_dataset("fashion-mnist", "test")
    return test.x[:1000], test.y[:1000]


def test_predictions_match_the_card_accuracy(test_images):
    x, y = test_images
    model = load_model("fmnist-cnn")
    pred = model.predict(x)
    assert pred.model_version == open_package("fmnist-cnn").card.version
    assert pred.class_ids.shape == (1000,) and pred.features.shape == (1000, model.card.features_dim)
    assert bool(((pred.confidence > 0) & (pred.confidence <= 1)).all())
    assert (pred.class_ids == y).mean() >= 0.9
    one = model.predict(x[0])                        # a single H x W x C image
    assert one.class_ids.tolist() == pred.class_ids[:1].tolist()
    assert model.providers[0] == "CPUExecutionProvider"


def test_swap_under_load_never_drops_a_request(test_images):
    x, _ = test_images
    slot = ModelSlot(load_model("fmnist-cnn"))
    versions = {open_package(n).card.version for n in ("fmnist-cnn", "fmnist-vgg")}
    errors, seen, stop = [], set(), threading.Event()

    def client(offset):
        i = offset
        while not stop.is_set():
            try:
                seen.add(slot.current().predict(x[i % 1000]).model_version)
            except Exception as e:     # any failure is a dropped request
                errors.append(e)
            i += 7

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        for name in ("fmnist-vgg", "fmnist-cnn", "fmnist-vgg"):
            ok, reason = slot.swap(name)
            assert ok, reason
            # the clients reach the new model before the next swap, however busy the machine
            wait_until(lambda: slot.current().version in seen, what="an answer from the model just swapped in")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors and seen == versions
    assert slot.current().card.name == "fmnist-vgg" and slot.describe()["swaps"] == 3


def test_a_corrupt_package_is_refused_and_the_current_model_keeps_serving(package_copy, test_images):
    slot = ModelSlot(load_model("fmnist-cnn"))
    before = slot.current()
    data = bytearray((package_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (package_copy / "model.onnx").write_bytes(bytes(data))
    ok, reason = slot.swap(str(package_copy))
    assert not ok and "model.onnx" in reason
    assert slot.current() is before and slot.describe()["swaps"] == 0
    assert slot.current().predict(test_images[0][:4]).class_ids.shape == (4,)


def test_one_swap_at_a_time():
    slot = ModelSlot(load_model("fmnist-cnn"))
    slot._swap_lock.acquire()          # stands in for a swap that is still loading
    try:
        assert slot.swap("fmnist-vgg") == (False, "another swap is in progress")
    finally:
        slot._swap_lock.release()
    assert slot.swap("fmnist-vgg")[0]


def test_wrong_input_shape_names_the_model():
    model = load_model("fmnist-cnn")
    with pytest.raises(OcapError, match=r"shape \(5, 32, 32, 3\) do not fit the model input 28x28"):
        model.predict(np.zeros((5, 32, 32, 3), np.uint8))


def test_describe_never_pairs_a_model_with_another_swap_count(tiny_switch_interval):
    """describe() read the model and then the swap count, so a swap in between paired the new model
    with the old count. Even counts serve the CNN, odd ones the VGG: every reading must agree."""
    cnn, vgg = load_model("fmnist-cnn", warmup=0), load_model("fmnist-vgg", warmup=0)
    slot, stop, torn = ModelSlot(cnn), threading.Event(), []

    def reader():
        while not stop.is_set():
            d = slot.describe()
            if (d["version"] == vgg.version) != (d["swaps"] % 2 == 1):
                torn.append((d["version"], d["swaps"]))

    readers = [threading.Thread(target=reader) for _ in range(8)]
    for t in readers:
        t.start()
    try:
        for k in range(2000):
            assert slot.install(vgg if k % 2 == 0 else cnn)[0]
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert torn == [] and slot.describe()["swaps"] == 2000
