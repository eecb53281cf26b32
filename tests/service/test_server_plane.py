"""The serving plane in process over its real socket and SQLite file: teacher sampling while another
model serves, swaps and reverts with their events and model records, 8 socket clients hammering through
20 swaps, counts that equal the predictions made, forget-samples."""

import sqlite3
import threading

import numpy as np
import pytest

from ocap_core.data import load_dataset
from service.client import Client
from service.model_slot import load_model
from service.server import Server, ServerConfig


@pytest.fixture(scope="module")
def frames():
    return load_dataset("fashion-mnist", "test").of_classes([1, 3, 8]).x[:300]


def _served_total(db, origin="served"):
    con = sqlite3.connect(str(db))
    try:
        return {v: n for v, n in con.execute("SELECT model_version, SUM(n) FROM counts WHERE origin = ? "
                                             "GROUP BY model_version", (origin,))}
    finally:
        con.close()


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_the_teacher_checks_a_share_and_feeds_the_cache_while_another_model_serves(tmp_path, frames, share):
    srv = Server("fmnist-vgg", tmp_path / "state", tmp_path / "s.sock",
                 ServerConfig(teacher_share=share, cache_per_class=64), base="fmnist-cnn")
    srv.start()
    try:
        assert srv.teacher is srv.base and srv.base.card.name == "fmnist-cnn"
        for x in frames[:200]:
            srv.infer(x[None])
        assert srv.wait_idle()
        want = int(200 * share)
        assert srv.teacher_checked == want - srv.background_skipped
        assert srv.teacher_inside == srv.teacher_checked          # the served VGG has every class
        assert 0 <= srv.teacher_disagreed < 0.2 * srv.teacher_inside
        cnn = load_model("fmnist-cnn").predict(frames[:200])
        cached = srv.cache.counts()
        assert 0 < sum(cached["train"].values()) + sum(cached["val"].values()) <= srv.teacher_checked
        assert set(cached["train"]) <= set(cnn.class_ids.tolist())
        srv.class_log.flush()
        assert _served_total(srv.db_path) == {srv.slot.current().version: 200}
        assert _served_total(srv.db_path, "teacher") == {srv.base.version: srv.teacher_checked}

        pruned = srv.slot.current().version
        ok, _ = srv.revert_to_base("drift")                  # back to the base at once: no load
        assert ok and srv.teacher is None and srv.slot.current() is srv.base
        before = sum(sum(c.values()) for c in srv.cache.counts().values())
        for x in frames[200:]:
            srv.infer(x[None])
        assert srv.wait_idle() and srv.teacher_checked == 0
        assert sum(sum(c.values()) for c in srv.cache.counts().values()) > before    # served frames offered
        with Client(srv.control.path) as c:
            events = c.call("history")["events"]
            models = {m["version"]: m["status"] for m in c.call("models")["models"]}
        assert events[0]["kind"] == "swap" and events[0]["detail"]["why"] == "drift"
        assert models == {srv.base.version: "serving", pruned: "retired"}
    finally:
        srv.stop()


def test_a_refused_swap_is_an_event_and_changes_nothing(tmp_path, package_copy):
    (package_copy / "model.onnx").write_bytes(b"truncated")
    srv = Server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock")
    try:
        before = srv.slot.current()
        ok, reason = srv.swap(str(package_copy))
        assert not ok and "sha256" in reason and srv.slot.current() is before
        ev = srv.events.recent(1)[0]
        assert ev["kind"] == "swap_refused" and ev["detail"]["serving"] == before.version
    finally:
        srv.stop()


def test_eight_socket_clients_through_twenty_swaps(tmp_path, frames):
    srv = Server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock", ServerConfig(flush_seconds=0.2))
    versions = {}
    for name in ("fmnist-cnn", "fmnist-vgg"):
        m = load_model(name)
        versions[m.version] = m.predict(frames).class_ids
    srv.start()
    answers, errors, stop = [], [], threading.Event()

    def client(seed):
        rng = np.random.default_rng(seed)
        with Client(srv.control.path) as c:
            while not stop.is_set():
                i = int(rng.integers(len(frames)))
                try:
                    r = c.predict(frames[i])
                    answers.append((i, r["model_version"], r["class_id"]))
                except Exception as e:  # any failure is what the test looks for
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    try:
        for k in range(20):
            ok, reason = srv.swap("fmnist-vgg" if k % 2 == 0 else "fmnist-cnn")
            assert ok, reason
    finally:
        stop.set()
        for t in threads:
            t.join()
        srv.stop()
    assert errors == [] and len(answers) > 200
    assert {v for _, v, _ in answers} == set(versions)                 # both models answered ...
    wrong = [(i, v, k) for i, v, k in answers if versions[v][i] != k]
    assert wrong == []                                                 # ... each answer wholly from one
    assert sum(_served_total(srv.db_path).values()) == len(answers)    # every prediction counted once
    swaps = [e for e in srv.events.recent(100) if e["kind"] == "swap"]
    assert len(swaps) == 20


def test_forget_samples_is_a_mutating_command(tmp_path, frames):
    srv = Server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock")
    srv.start()
    try:
        for x in frames[:60]:
            srv.infer(x[None])
        assert srv.wait_idle() and list((tmp_path / "state" / "cache").glob("*.npz"))
        assert srv.control.commands["forget-samples"].mutating      # checked against SO_PEERCRED
        with Client(srv.control.path) as c:
            n = c.call("forget-samples")["forgotten"]
            assert n > 0 and c.call("status")["cache"] == {"train": {}, "val": {}}
            last = c.call("history", limit=1)["events"][0]
            assert (last["kind"], last["detail"]) == ("samples_forgotten", {"samples": n})
        assert not list((tmp_path / "state" / "cache").glob("*.npz"))
    finally:
        srv.stop()
