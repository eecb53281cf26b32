"""No data leaves the device: through a whole cycle (stable -> personalize -> deploy -> probation ->
drift), neither ``ocapd`` nor its worker ever holds an AF_INET/AF_INET6 socket, every file either of them
has open for writing lies under the configured state, cache and runtime directories, and the home and
temporary directories they were given stay empty. psutil samples the processes every 0.1 s."""

import threading

import psutil
import pytest

from ocap_core.data import load_dataset
from tests.daemon.test_ocapd import events, feed, start, wait_event, write_ini

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_a_whole_cycle_opens_no_network_socket_and_writes_only_its_directories(tmp_path):
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    daemon = start(tmp_path, write_ini(tmp_path), HOME=str(home), TMPDIR=str(tmpdir))
    # the state, cache and runtime (socket) paths, and the log file standing in for journald's stderr
    allowed = [str(tmp_path / d) for d in ("state", "cache", "s.sock", "ocapd.log")]
    seen = {"pids": set(), "inet": [], "writes": [], "samples": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                parent = psutil.Process(daemon.pid)
                procs = [parent] + parent.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    seen["pids"].add(p.pid)
                    seen["inet"] += [(p.pid, c) for c in p.net_connections(kind="inet")]
                    seen["writes"] += [f.path for f in p.open_files()
                                       if f.mode != "r" and not any(f.path.startswith(a) for a in allowed)]
                except psutil.NoSuchProcess:
                    continue
            seen["samples"] += 1
            done.wait(0.1)                 # the sampling period

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    test = load_dataset("fashion-mnist", "test")
    replay = feed(tmp_path, {k: test.x[test.y == k][:400] for k in range(10)})
    try:
        wait_event(tmp_path, "probation_passed", 300)
        replay.set_mix({0: 0.5, 3: 0.3, 7: 0.2, 9: 0.35})
        wait_event(tmp_path, "drift", 60)
    finally:
        replay.stop()
        done.set()
        sampler.join()
        assert daemon.stop() == 0
    assert "personalize_finished" in [k for k, _ in events(tmp_path)]
    assert len(seen["pids"]) >= 2 and seen["samples"] > 100          # the worker was sampled too
    assert seen["inet"] == [] and sorted(set(seen["writes"])) == []
    assert list(home.iterdir()) == [] and list(tmpdir.iterdir()) == []
