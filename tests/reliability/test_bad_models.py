"""Bad model packages at every door: a hot swap, the model store and the gate each refuse them with
the reason, and what is serving never changes."""

import dataclasses
import os
import shutil

import pytest

from ocap_core.data import load_dataset
from ocap_core.package import read_card, resolve_model, write_card
from ocap_daemon.errors import DaemonError
from ocap_daemon.gate import GateConfig, check
from ocap_daemon.store import ModelStore
from ocap_service.server import build_server
from tests.ocap_daemon.test_store import corrupt, make_version


def _truncated(d):
    corrupt(d)


def _wrong_sha(d):
    card = read_card(d)
    write_card(d, dataclasses.replace(card, files=dict(card.files, **{"model.onnx": "0" * 64})))


def _wrong_input(d):
    card = read_card(d)
    write_card(d, dataclasses.replace(card, input=dataclasses.replace(card.input, shape=[1, 32, 32])))


def _fewer_classes(d):
    write_card(d, dataclasses.replace(read_card(d), class_ids=list(range(9))))


def _not_onnx(d):
    onnx = d / "model.onnx"
    os.chmod(str(onnx), 0o640)
    onnx.write_bytes(b"not a model at all")
    card = read_card(d)
    import hashlib

    write_card(d, dataclasses.replace(card, files=dict(card.files, **{"model.onnx": hashlib.sha256(
        b"not a model at all").hexdigest()})))


BAD = {"truncated ONNX": (_truncated, "sha256"), "wrong sha256": (_wrong_sha, "sha256"),
       "wrong input shape": (_wrong_input, "32"), "card names fewer classes than outputs": (_fewer_classes, "outputs"),
       "not an ONNX file (digests match)": (_not_onnx, "cannot load")}


@pytest.fixture(scope="module")
def frames():
    test = load_dataset("fashion-mnist", "test")
    return test.x[:64]


@pytest.fixture
def bad(request, tmp_path):
    damage, says = BAD[request.param]
    d = make_version(resolve_model("fmnist-vgg"), tmp_path / "bad", "bad-version")
    damage(d)
    return d, says


@pytest.mark.parametrize("bad", list(BAD), indirect=True)
def test_refused_at_the_swap_the_store_and_the_gate(tmp_path, bad, frames):
    path, says = bad
    srv = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock")
    try:
        before = srv.slot.current()
        ok, reason = srv.swap(str(path))
        assert not ok and says in reason and srv.slot.current() is before
        assert srv.events.recent(1)[0]["kind"] == "swap_refused"
        assert srv.infer(frames[:4]).model_version == before.version
        if says == "sha256":                   # the store checks integrity; meaning is the gate's and the load's
            with pytest.raises(DaemonError, match="sha256"):
                ModelStore(tmp_path / "store").add(path)
        v = check(str(path), before, srv.base, frames, GateConfig())
        assert not v.passed and v.reason.startswith("does not load") and says in v.reason
    finally:
        srv.stop()


def test_a_stored_model_dir_replaced_by_a_symlink_is_never_served(tmp_path):
    store = ModelStore(tmp_path / "state")
    good = make_version(resolve_model("fmnist-vgg"), tmp_path / "v", "vgg-x")
    stored = store.add(good)
    store.set_current("vgg-x")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(stored), str(elsewhere))
    os.symlink(str(elsewhere), str(stored))                     # same content, now through a link
    with pytest.raises(DaemonError, match="symlink|symbolic"):
        store.get("vgg-x")
    path, why = store.recover(resolve_model("fmnist-cnn"))
    assert path == resolve_model("fmnist-cnn") and "vgg-x" in why
