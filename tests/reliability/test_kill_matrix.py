"""kill -9 at named fault points across a personalization cycle (test-only ``OCAP_FAULTS``), in ``ocapd``
and, separately, in the worker, plus kills at random times. After each: the database passes
``PRAGMA integrity_check``, no count answered before the last flush is lost, no partial model directory
is ever valid, and a restarted daemon serves what the store says (current, else last_good, else base).
The counts are checked against the flushes the daemon itself reported, not against a fixed slack
around the kill (a busy machine delays the flush thread)."""

import signal
import sqlite3
import time

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import open_package, resolve_model
from ocap_daemon.errors import DaemonError
from ocap_daemon.launch import wait_until
from ocap_daemon.store import ModelStore
from ocap_service.client import ServiceError
from tests.ocap_daemon.test_ocapd import ONE_STEP, ctl, events, feed, start, write_ini

pytestmark = [pytest.mark.torch, pytest.mark.slow]
CYCLE_S = 300        # a whole cycle to probation takes ~100 s idle; more while other work shares the cores
# The kills are about the loop's state on disk, not the model: every point but the search's gets the
# one-step worker (its stages are load, teacher, score, select, prune, finetune, export); worker.search
# gets the search of test_ocapd's config (a tighter budget raced the daemon's kill at the budget: the
# search overruns its share).
QUICK = ONE_STEP
# worker.search fires once the search has chosen a level: test_ocapd's search with more work
# again to spare after it (with a core kept busy and three test workers, the run once ended for another
# reason before that point; the stages after a search fit the rest of an 80-s budget with little room)
SEARCH = {"time_budget": "300s"}
# A cycle about twice as fast as test_ocapd's (shorter windows, probation and drift window: stable after
# ~4 s, not ~10 s; the whole cycle ~18 s, not ~30 s): each kill needs the cycle to reach its point, and
# the recovery checked does not depend on how long the windows were.
CYCLE = {"stability": {"window": "1.5s", "windows": "2", "min_predictions": "120", "check_interval": "0.5s"},
         "probation": {"duration": "3s"}, "drift": {"window": "2s", "min_checks": "40"}}
DAEMON_POINTS = [
    "cache.file_written", "cache.indexed", "classlog.flush", "policy.trigger", "policy.samples_written",
    "policy.worker_started", "policy.worker_done", "gate.loaded", "deploy.before_store", "store.copied",
    "store.renamed", "deploy.stored", "deploy.swapped", "store.current.tmp_written", "deploy.current_set",
    "probation.passing", "store.last_good.tmp_written", "probation.last_good_set", "revert.begin", "revert.swapped",
]
WORKER_POINTS = ["worker.load", "worker.teacher", "worker.score", "worker.select", "worker.search", "worker.export",
                 "worker.before_done"]


@pytest.fixture(scope="module")
def images():
    test = load_dataset("fashion-mnist", "test")
    return {k: test.x[test.y == k][:400] for k in range(10)}


def drive(tmp, daemon, replay, timeout, stop_when=lambda kinds: False):
    """Replay a stable 3-class mix; once probation passes, add a fourth class (drift). Ends when the
    daemon dies, ``stop_when(event kinds)`` holds, or ``timeout`` passes. Returns when the daemon was
    found dead (None if it was not) and a time by which every answered request had been flushed: the
    end of the flush before the latest one its status reported (flushes run one at a time, so the
    latest began after that one ended and took every count added before; a request is counted before
    it is answered)."""
    seen = {"drifting": False, "flushes": []}

    def over():
        if not daemon.running():
            return ("died", time.time())
        kinds = [k for k, _ in events(tmp)]
        if stop_when(kinds):
            return ("stopped", None)
        if "probation_passed" in kinds and not seen["drifting"]:
            replay.set_mix({0: 0.5, 3: 0.3, 7: 0.2, 9: 0.35})
            seen["drifting"] = True
        try:
            flushed = daemon.request("status", timeout=5.0)["last_flush"]
        except (ServiceError, OSError):           # dying
            return None
        if flushed and flushed not in seen["flushes"]:
            seen["flushes"].append(flushed)
        return None

    try:
        died_at = wait_until(over, timeout, "the daemon to die or the cycle to get there")[1]
    except TimeoutError:
        died_at = None
    flushes = sorted(seen["flushes"])
    return died_at, flushes[-2] if len(flushes) >= 2 else None


def expected_version(store: ModelStore) -> str:
    for pointer in (store.current(), store.last_good()):
        if pointer:
            try:
                store.get(pointer)
                return pointer
            except DaemonError:
                continue
    return open_package(resolve_model("fmnist-cnn")).card.version


def check_after_kill(tmp, flushed, replay):
    """``flushed``: a time by which every request answered was in a committed flush (``drive``)."""
    con = sqlite3.connect(str(tmp / "state" / "ocap.db"))
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counted = con.execute("SELECT COALESCE(SUM(n), 0) FROM counts WHERE origin = 'served'").fetchone()[0]
    finally:
        con.close()
    answered = [at for _, _, _, _, ok, at in replay.log if ok]
    before_last_flush = sum(1 for at in answered if flushed is not None and at < flushed)
    assert before_last_flush <= counted <= len(answered), (before_last_flush, counted, len(answered))
    store = ModelStore(tmp / "state")
    for v in store.versions():                                   # whatever is listed is whole
        store.get(v)
    want = expected_version(store)
    daemon = start(tmp, write_ini(tmp))                          # no faults now
    try:
        st = ctl(tmp, "status")
        assert st["model"]["version"] == want
        assert not [p for p in (tmp / "state" / "models").iterdir() if p.name.startswith(".tmp-")]
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("point", DAEMON_POINTS)
def test_kill_ocapd_at(tmp_path, images, point):
    daemon = start(tmp_path, write_ini(tmp_path, personalize=QUICK, **CYCLE), OCAP_FAULTS=f"{point}=kill")
    replay = feed(tmp_path, images)
    try:
        died_at, flushed = drive(tmp_path, daemon, replay, timeout=CYCLE_S)
    finally:
        replay.stop()
        daemon.kill()
    assert died_at is not None, f"ocapd never reached {point}: {[k for k, _ in events(tmp_path)]}"
    assert daemon.proc.returncode == -signal.SIGKILL
    check_after_kill(tmp_path, flushed, replay)


@pytest.mark.parametrize("point", WORKER_POINTS)
def test_kill_the_worker_at(tmp_path, images, point):
    daemon = start(tmp_path, write_ini(tmp_path, personalize=SEARCH if point == "worker.search" else QUICK, **CYCLE),
                   OCAP_FAULTS=f"{point}=kill")
    replay = feed(tmp_path, images)
    try:
        drive(tmp_path, daemon, replay, timeout=CYCLE_S, stop_when=lambda kinds: "personalize_failed" in kinds)
        failed = [d for k, d in events(tmp_path) if k == "personalize_failed"]
        assert failed and (failed[0]["state"], failed[0].get("signal")) == ("crashed", "SIGKILL"), failed
        assert "killed by SIGKILL (signal 9) in stage" in failed[0]["reason"], failed
        st = ctl(tmp_path, "status")
        assert daemon.running() and st["model"]["version"] == st["base"]          # serving never stopped
        assert st["daemon"]["phase"] == "observing" and st["daemon"]["worker"] is None
        jobs = tmp_path / "state" / "jobs"
        assert not jobs.exists() or not list(jobs.iterdir())                       # no partial candidate
        assert ModelStore(tmp_path / "state").versions() == []
    finally:
        replay.stop()
        assert daemon.stop() == 0
    assert not [r for r in replay.log if not r[4]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_ocapd_at_a_random_time(tmp_path, images, seed):
    when = float(np.random.default_rng(seed).uniform(3, 18))      # the cycle reaches probation by ~18 s
    daemon = start(tmp_path, write_ini(tmp_path, personalize=QUICK, **CYCLE))
    replay = feed(tmp_path, images)
    t0 = time.time()
    try:
        _, flushed = drive(tmp_path, daemon, replay, timeout=when)
        daemon.kill()
        killed_at = time.time()
    finally:
        replay.stop()
        daemon.kill()
    assert killed_at - t0 >= when - 1
    check_after_kill(tmp_path, flushed, replay)
