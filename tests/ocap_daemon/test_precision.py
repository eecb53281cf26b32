"""Which precision goes to the gate (``[personalize] quantize = int8``): the rule on given figures, then
real runs on the shipped CNN and its INT8 child (real onnxruntime sessions, real Fashion-MNIST frames).
Making the child needs the ``onnx`` package (the torch extra): those tests carry the ``torch`` marker."""

import shutil

import pytest

from ocap_core.data import load_dataset
from ocap_core.package import open_package, resolve_model
from ocap_daemon.precision import MIN_FRAMES, MIN_SPEEDUP, choose, decide
from tests.ocap_daemon.test_store import corrupt

onnx_tools = pytest.mark.torch


@pytest.mark.parametrize("agreement,speedup,max_loss,keep,words", [
    (0.995, 1.8, 1.0, True, "INT8 kept: 0.50 pp from its FP32 parent (budget 1 pp), 1.80x as fast"),
    (0.985, 1.8, 1.0, False, "INT8 loses 1.50 pp of agreement with its FP32 parent, over the budget of 1 pp"),
    (0.985, 1.8, 2.0, True, "INT8 kept"),
    (1.0, 1.02, 1.0, False, f"INT8 is 1.02x as fast as its FP32 parent here (needs {MIN_SPEEDUP:.2f}x)"),
    (1.0, 0.7, 1.0, False, "0.70x as fast"),                 # slower here: e.g. no VNNI, or a GPU provider
    (0.98, 0.9, 1.0, False, "over the budget"),               # both wrong: the loss is named first
])
def test_the_rule_keeps_int8_only_within_the_budget_and_faster(agreement, speedup, max_loss, keep, words):
    kept, why = decide(agreement, speedup, max_loss)
    assert kept is keep and words in why


@pytest.fixture(scope="module")
def frames():
    test = load_dataset("fashion-mnist", "test")
    return test.x[:300], test.y[:300]


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    from ocap_core.quantize import QuantSpec, quantize_package

    train = load_dataset("fashion-mnist", "train")
    out = tmp_path_factory.mktemp("precision") / "cnn-int8"
    return str(quantize_package(open_package("fmnist-cnn"), train.x[:64], out, QuantSpec(calibration=64)).path)


@onnx_tools
def test_a_real_int8_child_is_judged_against_its_parent_on_this_machine(child, frames):
    parent = str(resolve_model("fmnist-cnn"))
    c = choose(parent, child, *frames, max_loss=1.0, latency_runs=30)
    f = c.figures
    assert f["frames"] == 300 and f["agreement"] >= 0.98 and f["hard_agreement"] >= 0.98, f
    assert f["fp32_version"] == open_package("fmnist-cnn").card.version and f["int8_version"].startswith("fmnist-cnn-int8-")
    # which one goes on is the rule's answer on the figures measured here (no speed is assumed by the test)
    kept, why = decide(f["agreement"], f["speedup"], 1.0)
    assert (c.int8, c.path, c.reason) == (kept, child if kept else parent, why)


@onnx_tools
def test_only_frames_of_the_parents_classes_count_and_too_few_keep_fp32(child, frames):
    x, y = frames
    c = choose(str(resolve_model("fmnist-cnn")), child, x[:MIN_FRAMES - 1], y[:MIN_FRAMES - 1], max_loss=1.0)
    assert not c.int8 and c.path == str(resolve_model("fmnist-cnn"))
    assert c.reason == f"INT8 not judged: {MIN_FRAMES - 1} held-back frames of the kept classes, {MIN_FRAMES} needed"


@onnx_tools
def test_a_missing_broken_or_foreign_child_keeps_fp32(child, frames, tmp_path):
    parent = str(resolve_model("fmnist-cnn"))
    assert choose(parent, None, *frames, max_loss=1.0).reason == "no INT8 child"
    broken = tmp_path / "broken"
    shutil.copytree(child, str(broken))
    corrupt(broken)
    c = choose(parent, str(broken), *frames, max_loss=1.0)
    assert not c.int8 and c.path == parent and c.reason.startswith("INT8 not judged: model package")
    other = str(resolve_model("fmnist-vgg"))        # same input and classes, but not its parent
    c = choose(other, child, *frames, max_loss=1.0)
    assert not c.int8 and c.path == other and "is not a child of fmnist-vgg-" in c.reason
