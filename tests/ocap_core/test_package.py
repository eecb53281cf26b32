import json

import numpy as np
import pytest

from ocap_core.data import Dataset, load_dataset
from ocap_core.errors import OcapError
from ocap_core.evaluate import evaluate_package
from ocap_core.package import file_sha256, open_package, read_card, shipped_models, write_card
from tests.helpers import SHIPPED, TARGETS


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("fashion-mnist", "test")


def test_the_four_base_models_ship():
    assert shipped_models() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_package_verifies_and_is_small(name):
    pkg = open_package(name)
    card = pkg.card
    assert card.name == name and card.class_ids == list(range(10)) and card.outputs == ["logits", "features"]
    assert set(card.files) == {"weights.pt", "model.onnx"}
    assert sum((pkg.path / f).stat().st_size for f in list(card.files) + ["card.json"]) <= 6_000_000
    assert card.provenance["command"].startswith(f"ocap train --model {card.arch['name']} --data fashion-mnist")
    assert card.metrics["test_accuracy"] >= TARGETS[name]
    assert len(card.metrics["test_per_class"]) == 10


def _reproduces_card(name, test_split):
    pkg = open_package(name)
    res = evaluate_package(pkg, test_split, latency_runs=0)
    assert res["accuracy"] == pytest.approx(pkg.card.metrics["test_accuracy"], abs=5e-4)
    for k, acc in res["per_class"].items():
        assert acc == pytest.approx(pkg.card.metrics["test_per_class"][k], abs=3e-3)
    assert res["accuracy"] >= TARGETS[name]


def test_small_cnn_onnx_reproduces_its_card(test_split):
    _reproduces_card("fmnist-cnn", test_split)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "fmnist-cnn"])
def test_onnx_reproduces_card(name, test_split):
    _reproduces_card(name, test_split)


# ---------------------------------------------------------------- corrupt packages

def test_invalid_card_json(package_copy):
    (package_copy / "card.json").write_text("{ not json")
    with pytest.raises(OcapError, match="card.json: not valid JSON"):
        open_package(str(package_copy))


def test_card_missing_a_key(package_copy):
    d = json.loads((package_copy / "card.json").read_text())
    del d["input"]
    (package_copy / "card.json").write_text(json.dumps(d))
    with pytest.raises(OcapError, match="missing key 'input'"):
        open_package(str(package_copy))


@pytest.mark.parametrize("fname", ["weights.pt", "model.onnx"])
def test_corrupt_file_fails_sha256(package_copy, fname):
    data = bytearray((package_copy / fname).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (package_copy / fname).write_bytes(bytes(data))
    with pytest.raises(OcapError, match=f"sha256 of {fname}"):
        open_package(str(package_copy))


def test_missing_file(package_copy):
    (package_copy / "model.onnx").unlink()
    with pytest.raises(OcapError, match="model.onnx is missing"):
        open_package(str(package_copy))
    (package_copy / "card.json").unlink()
    with pytest.raises(OcapError, match="card.json is missing"):
        open_package(str(package_copy))


def test_truncated_onnx_with_matching_card_is_rejected_by_onnxruntime(package_copy, test_split):
    onnx = package_copy / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:2000])
    card = read_card(package_copy)
    card.files["model.onnx"] = file_sha256(onnx)
    write_card(package_copy, card)
    with pytest.raises(OcapError, match="onnxruntime cannot load .*model.onnx"):
        evaluate_package(open_package(str(package_copy)), test_split.subset(np.arange(10)), latency_runs=0)


def test_card_class_ids_that_disagree_with_outputs(package_copy, test_split):
    card = read_card(package_copy)
    card.class_ids = [0, 1, 2]
    write_card(package_copy, card)
    with pytest.raises(OcapError, match="has 10 outputs, its card lists 3 class_ids"):
        evaluate_package(open_package(str(package_copy)), test_split.subset(np.arange(50)), latency_runs=0)


def test_file_names_outside_the_package_are_refused(package_copy):
    card = read_card(package_copy)
    card.files["../model.onnx"] = card.files.pop("model.onnx")
    write_card(package_copy, card)
    with pytest.raises(OcapError, match="plain name"):
        open_package(str(package_copy))


def test_wrong_input_shape(test_split):
    pkg = open_package("fmnist-cnn")
    big = Dataset(np.zeros((4, 32, 32, 1), np.uint8), np.zeros(4, np.int64), test_split.class_names, "big")
    with pytest.raises(OcapError, match="do not fit the model input 28x28"):
        evaluate_package(pkg, big, latency_runs=0)


def test_unknown_model_name():
    with pytest.raises(OcapError, match="unknown model 'fmnist-resnet99'.*fmnist-resnet20"):
        open_package("fmnist-resnet99")


def test_restricted_accuracy_is_at_least_plain_accuracy(test_split):
    res = evaluate_package(open_package("fmnist-cnn"), test_split, classes=[0, 2, 6], latency_runs=5)
    assert res["images"] == 3000 and set(res["per_class"]) == {"0", "2", "6"}
    assert res["restricted_accuracy"] >= res["accuracy"]
    assert res["latency_ms"] > 0 and res["macs"] > 0 and res["params"] > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_are_opset_13_and_their_cards_say_so(name):
    """JetPack 4.6's onnxruntime 1.10/1.11 loads opsets up to 15/16: the shipped models are 13."""
    pkg = open_package(name)
    data = pkg.onnx_path.read_bytes()
    assert data.endswith(b"\x42\x02\x10\x0d")           # ModelProto.opset_import: the default domain at 13
    assert pkg.card.metrics["onnx_opset"] == 13 and pkg.card.provenance["reexported"]["opset"] == 13


def test_a_model_of_an_opset_this_onnxruntime_lacks_is_refused_with_what_to_do(tmp_path):
    """A package exported for a newer onnxruntime (the opset stamp raised to 99 in the file's bytes):
    onnxruntime's refusal, then what to do about it."""
    from ocap_core.runtime import open_session

    data = open_package("fmnist-cnn").onnx_path.read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[:-1] + bytes([99]))
    with pytest.raises(OcapError, match="loads older opsets than the file's: ocap exports opset 13 today; export "
                                        "the package anew with scripts/reexport.py"):
        open_session(path, threads=1)
