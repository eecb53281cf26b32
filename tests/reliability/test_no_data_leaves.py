"""No data leaves the device: through a whole cycle (stable -> personalize -> deploy -> probation ->
drift), neither ``ocapd`` nor its worker ever holds an AF_INET/AF_INET6 socket, every file either of them
has open for writing lies under the configured state, cache and runtime directories (and the metrics
textfile's), and the home and temporary directories they were given stay empty. psutil samples the
processes every 0.1 s. The metrics are on: scraped over the socket and written to the textfile each
second, they add no network socket, and they count the cycle."""

import threading

import psutil
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from ocap_core.data import load_dataset
from tests.helpers import WAIT_S, wait_until
from tests.ocap_daemon.test_ocapd import ONE_STEP, events, feed, start, wait_event, write_ini

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_a_whole_cycle_opens_no_network_socket_and_writes_only_its_directories(tmp_path):
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    textfile = tmp_path / "textfile" / "ocap.prom"
    textfile.parent.mkdir()
    ini = write_ini(tmp_path, personalize=ONE_STEP, metrics={"textfile": str(textfile), "interval": "1s"})
    daemon = start(tmp_path, ini, HOME=str(home), TMPDIR=str(tmpdir))
    # the state, cache and runtime (socket) paths, the textfile's directory, and the log file standing
    # in for journald's stderr
    allowed = [str(tmp_path / d) for d in ("state", "cache", "s.sock", "textfile", "ocapd.log")]
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
        scraped = {f.name: f for f in parse_openmetrics(daemon.request("metrics")["text"])}
        replay.set_mix({0: 0.5, 3: 0.3, 7: 0.2, 9: 0.35})
        wait_event(tmp_path, "drift", 60)
        drift_reverts = wait_until(lambda: _sample(textfile, "ocap_reverts_total", cause="drift"), WAIT_S,
                                   what="the textfile counting the drift revert")
    finally:
        replay.stop()
        done.set()
        sampler.join()
        assert daemon.stop() == 0
    assert "personalize_finished" in [k for k, _ in events(tmp_path)]
    assert len(seen["pids"]) >= 2 and seen["samples"] > 100          # the worker was sampled too
    assert seen["inet"] == [] and sorted(set(seen["writes"])) == []
    assert list(home.iterdir()) == [] and list(tmpdir.iterdir()) == []
    outcomes = {s.labels["outcome"]: s.value for s in scraped["ocap_personalizations"].samples}
    probations = {s.labels["outcome"]: s.value for s in scraped["ocap_probations"].samples}
    assert outcomes["deployed"] >= 1 and probations["passed"] >= 1 and drift_reverts >= 1


def _sample(textfile, name, **labels):
    """The value of a sample of the textfile (Prometheus text format), or None while it is missing or 0."""
    if not textfile.exists():
        return None
    for fam in parse_prometheus(textfile.read_text()):
        for s in fam.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return s.value or None
    return None
