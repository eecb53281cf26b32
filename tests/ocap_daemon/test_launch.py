"""``ocap_daemon.launch``: the one way the demo, the benchmarks and the tests start ``ocapd`` and wait for it."""

import time

import pytest

from ocap_daemon.errors import DaemonError
from ocap_daemon.launch import start_daemon, start_ocapd, wait_until
from tests.ocap_daemon.test_ocapd import write_ini


def test_wait_until_returns_the_first_truthy_value_and_names_what_it_waited_for():
    calls = []
    assert wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "ready"), 30, "three calls", 0.01) == "ready"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="waited 0.2 s for the moon"):
        wait_until(lambda: None, 0.2, "the moon", 0.05)
    assert time.monotonic() - t0 < 10


def test_a_started_daemon_answers_records_events_and_stops_cleanly(tmp_path):
    ini = write_ini(tmp_path, personalize={"enabled": "no"})
    with start_ocapd(ini, tmp_path / "s.sock", tmp_path / "ocapd.log") as daemon:
        assert daemon.running() and daemon.request("status")["daemon"]["phase"] == "observing"
        events = daemon.events()
        assert "daemon_started" in [e["kind"] for e in events]
        assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)          # oldest first
        assert daemon.stop() == 0
    assert not daemon.running() and daemon.stop() == 0                   # a second stop is harmless


def test_a_daemon_that_exits_before_answering_is_reported_with_its_log(tmp_path):
    ini = write_ini(tmp_path, stability={"windows": "1"})                # a bad config: exit 78
    with pytest.raises(DaemonError) as e:
        start_ocapd(ini, tmp_path / "s.sock", tmp_path / "ocapd.log")
    assert "exited with status 78" in str(e.value) and "windows" in str(e.value) and str(ini) in str(e.value)


def test_a_daemon_that_never_answers_is_killed_at_the_deadline(tmp_path):
    args = ["timeit", "-n", "1", "-r", "1", "-s", "import time", "time.sleep(600)"]     # runs, answers nothing
    t0 = time.monotonic()
    with pytest.raises(DaemonError, match=r"waited 3 s for python -m timeit .* to answer status"):
        start_daemon(args, tmp_path / "none.sock", tmp_path / "log", timeout=3)
    assert time.monotonic() - t0 < 60
