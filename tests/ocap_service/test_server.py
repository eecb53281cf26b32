"""``python -m ocap_service`` as a real subprocess replaying Fashion-MNIST, driven by ``ocapctl`` over its real
socket, stopped by SIGTERM; the class mix it replayed shows up in the SQLite log."""

import json
import signal
import sqlite3
import sys
import threading

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_service.client import Client
from ocap_service.errors import ServiceError
from ocap_service.sources import ReplaySource, parse_mix
from tests.helpers import ROOT, captured, serve, subprocess_env, wait_until


def _ctl(sock, *args):
    return captured([sys.executable, "-m", "ocap_service.ctl", "--socket", str(sock), *args],
                    cwd=str(ROOT), env=subprocess_env(), timeout=60)


def _serve(tmp_path, *args):
    """``python -m ocap_service`` on TMP/state and TMP/ocap.sock, once it answers there."""
    return serve(tmp_path / "state", tmp_path / "ocap.sock", *args)


def _replayed(sock, classes, flushed, cached=False):
    """Whether the replay's frames of every class in ``classes`` are in the class log (and with
    ``cached`` in the sample cache), with at least ``flushed`` counts in all: what the assertions read."""
    with Client(sock) as c:
        counts = {r["class_id"]: r["n"] for r in c.call("classes", minutes=5)["classes"]}
        held = {int(k) for k in c.call("status")["cache"]["train"]} if cached else set(classes)
    return set(classes) <= held and set(classes) <= set(counts) and sum(counts.values()) >= flushed


def _counted(db):
    """Predictions in the class log file, read as a new process would."""
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT COALESCE(SUM(n), 0) FROM counts").fetchone()[0]
    finally:
        con.close()


def test_serve_replay_and_control(tmp_path):
    proc, sock = _serve(tmp_path, "--source", "replay", "--rate", "200", "--mix", "1:0.7,8:0.3@1m",
                        "--flush-seconds", "0.3")
    try:
        wait_until(lambda: _replayed(sock, (1, 8), 100, cached=True), what="100 replayed frames of classes 1 and 8 in the log")
        r = _ctl(sock, "--json", "status")
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert status["model"]["name"] == "fmnist-cnn" and status["requests"] > 50
        cached = status["cache"]["train"]          # keyed by predicted class: a few misclassified frames too
        assert {"1", "8"} <= set(cached) and cached["1"] + cached["8"] >= 0.8 * sum(cached.values()), cached
        np.save(tmp_path / "img.npy", load_dataset("fashion-mnist", "test").of_classes([1]).x[0])
        r = _ctl(sock, "predict", str(tmp_path / "img.npy"))
        assert r.returncode == 0 and r.stdout.startswith("1 Trouser"), r.stdout + r.stderr
        r = _ctl(sock, "--json", "classes", "--minutes", "5")
        counts = {c["class_id"]: c["n"] for c in json.loads(r.stdout)["classes"]}
        assert counts[1] > counts[8] > 0 and counts[1] + counts[8] >= 0.95 * sum(counts.values()), counts
        r = _ctl(sock, "classes")
        assert r.returncode == 0 and "Trouser" in r.stdout and "#" in r.stdout
        for cmd, shows in (("status", "requests (0 failed)"), ("models", "serving"), ("history", "serving_started")):
            r = _ctl(sock, cmd)
            assert r.returncode == 0 and shows in r.stdout, (cmd, r.stdout, r.stderr)
        r = _ctl(sock, "report", str(tmp_path / "rep"))
        text = (tmp_path / "rep" / "report.md").read_text()
        assert r.returncode == 0 and "## Events" in text and "serving_started" in text and "Trouser" in text
        assert _ctl(sock, "frobnicate").returncode == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not sock.exists()
    r = _ctl(sock, "status")
    assert r.returncode == 3 and "unreachable" in r.stderr
    con = sqlite3.connect(str(tmp_path / "state" / "ocap.db"))
    assert con.execute("SELECT SUM(n) FROM counts").fetchone()[0] >= status["requests"]


def test_kill_9_keeps_every_flushed_count(tmp_path):
    """The flush thread writes the counts while the server runs (no stop needed), what it wrote survives
    a kill -9 in the middle of traffic intact, and nothing is counted twice. How much a kill loses (at
    most one flush interval) is a matter of timing, measured by the benchmarks, not asserted here."""
    proc, sock = _serve(tmp_path, "--flush-seconds", "0.5")
    db = tmp_path / "state" / "ocap.db"
    x = load_dataset("fashion-mnist", "test").x[:500]
    answered = []

    def client(stop):
        with Client(sock) as c:
            while not stop.is_set():
                try:
                    c.predict(x[len(answered) % len(x)])
                except (OSError, ValueError, ServiceError):
                    return                                              # the server was killed
                answered.append(1)

    def traffic(frames):
        """Run one client until ``frames`` more answers came back; returns it, still running, and its stop."""
        stop, want = threading.Event(), len(answered) + frames
        t = threading.Thread(target=client, args=(stop,), daemon=True)
        t.start()
        wait_until(lambda: len(answered) >= want, what=f"{frames} answers")
        return t, stop

    t, stop = traffic(100)
    stop.set()
    t.join(timeout=60)
    paused = len(answered)
    wait_until(lambda: _counted(db) == paused, what=f"the flush thread to write all {paused} counts")
    t, stop = traffic(50)
    proc.kill()                                                         # mid-traffic, maybe mid-flush
    proc.wait(timeout=60)
    stop.set()
    t.join(timeout=60)
    con = sqlite3.connect(str(db))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    counted = _counted(db)
    # every count flushed before the kill is there; at most the one request in flight was counted
    # without its answer arriving
    assert paused <= counted <= len(answered) + 1, (paused, counted, len(answered))
    proc, sock = _serve(tmp_path)                                     # restarts over the stale socket
    try:
        with Client(sock) as c:
            assert c.call("status")["model"]["name"] == "fmnist-cnn"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_class_mix_schedule():
    mix = parse_mix("0:1,3:3@2s; 7:1@1m", 10)
    assert [m[2] for m in mix] == [2, 60] and mix[0][1].tolist() == [0.25, 0.75]
    test = load_dataset("fashion-mnist", "test")
    seen = []
    src = ReplaySource(test.x, test.y, seen.append, rate=1000, mix=mix)
    assert [src.segment_at(t) for t in (0, 1.9, 2.1, 61.9, 62.5)] == [0, 0, 1, 1, 0]
    for bad, msg in (("0:1", "expected"), ("0:1,0:2@1m", "distinct"), ("12:1@1m", "0..9"), ("0:-1@1m", "shares"),
                     ("0:x@1m", "bad item")):
        with pytest.raises(ServiceError, match=msg):
            parse_mix(bad, 10)


@pytest.mark.parametrize("keep", [False, True])
def test_directory_source_handles_rejects_and_skips_partial_files(tmp_path, keep):
    from PIL import Image

    from ocap_service.sources import DirectorySource

    spool = tmp_path / "spool"
    spool.mkdir()
    x = load_dataset("fashion-mnist", "test").x
    Image.fromarray(x[0][:, :, 0]).save(spool / "a.png")
    np.save(spool / "b.npy", x[1])
    (spool / "c.png").write_bytes(b"\x89PNG but not really")
    (spool / ".d.png.part").write_bytes(b"being written")
    got = []
    src = DirectorySource(spool, got.append, tmp_path / "rejected", tmp_path / "done" if keep else None)
    assert src.scan() == 3
    assert len(got) == 2 and got[0].shape == (1, 28, 28, 1) and np.array_equal(got[0][0], x[0])
    assert src.frames == 2 and src.rejected == 1 and (tmp_path / "rejected" / "c.png").exists()
    assert sorted(p.name for p in spool.iterdir()) == [".d.png.part"]
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["a.png", "b.npy"] if keep else \
        not (tmp_path / "done").exists()
    with pytest.raises(ServiceError, match="nowhere"):
        DirectorySource(tmp_path / "nowhere", got.append, tmp_path / "r")


def test_a_source_that_cannot_start_is_a_clear_error(tmp_path):
    """Without OpenCV (not a dependency) or without a camera, the server says so and exits 1."""
    r = captured([sys.executable, "-m", "ocap_service", "--state-dir", str(tmp_path), "--socket",
                  str(tmp_path / "s.sock"), "--source", "camera", "--camera", "7"],
                 cwd=str(ROOT), env=subprocess_env(), timeout=120)
    assert r.returncode == 1 and ("needs OpenCV" in r.stderr or "camera '7' cannot be opened" in r.stderr), r.stderr
    r = captured([sys.executable, "-m", "ocap_service", "--state-dir", str(tmp_path), "--socket",
                  str(tmp_path / "s.sock"), "--source", "directory"],
                 cwd=str(ROOT), env=subprocess_env(), timeout=120)
    assert r.returncode == 1 and "--spool" in r.stderr


def test_replay_of_an_image_folder_is_in_the_models_class_space(tmp_path):
    """Issue 13: ``--source replay`` loaded the data without the model's class names (folders Sneaker and
    Trouser became classes 0 and 1) and always took its test split; ``--split all`` replays every image."""
    from PIL import Image

    fm = load_dataset("fashion-mnist", "test")
    for folder, names in (("shoes", {1: "Trouser", 7: "Sneaker"}), ("odd", {1: "Trouser", 9: "Boots"})):
        for k, name in names.items():
            (tmp_path / folder / name).mkdir(parents=True)
            for i, img in enumerate(fm.of_classes([k]).x[:6]):
                Image.fromarray(img[:, :, 0]).save(str(tmp_path / folder / name / f"{i}.png"))
    proc, sock = _serve(tmp_path, "--source", "replay", "--data", str(tmp_path / "shoes"), "--split", "all",
                        "--rate", "200", "--mix", "1:1,7:1@1m", "--flush-seconds", "0.3")
    try:
        wait_until(lambda: _replayed(sock, (1, 7), 50), what="50 replayed frames of classes 1 and 7 in the log")
        r = _ctl(sock, "--json", "classes", "--minutes", "5")
        assert r.returncode == 0, r.stderr
        counts = {c["class_id"]: c["n"] for c in json.loads(r.stdout)["classes"]}
        assert counts[1] > 0 and counts[7] > 0 and counts[1] + counts[7] >= 0.9 * sum(counts.values()), counts
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    r = captured([sys.executable, "-m", "ocap_service", "--state-dir", str(tmp_path / "state2"), "--socket",
                  str(tmp_path / "s2.sock"), "--source", "replay", "--data", str(tmp_path / "odd"),
                  "--split", "all"], cwd=str(ROOT), env=subprocess_env(), timeout=120)
    line = r.stderr.strip()
    assert r.returncode == 1 and "Traceback" not in line, r.stderr
    assert "class folders ['Boots'] are neither class names nor class ids of the model (10 classes" in line, line
