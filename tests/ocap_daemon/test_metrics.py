"""The control plane's metrics and the node_exporter textfile: a real ``ocapd`` writes the textfile and
answers ``metrics`` on its Unix socket (and holds no network socket); the history counters come from the
events table of a real SQLite file and survive a restart; the textfile is replaced atomically with mode
0644; a bad ``[metrics]`` setting is a one-line ConfigError, a failing write a logged error."""

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from ocap_core.data import load_dataset
from ocap_daemon.config import ConfigError, load_config
from ocap_daemon.deployer import Phase
from ocap_daemon.main import control_plane
from ocap_daemon.metrics import DaemonCollector, Textfile, write_textfile
from ocap_daemon.store import ModelStore
from ocap_service.client import Client
from ocap_service.server import build_server
from tests.helpers import ROOT, WAIT_S, captured, subprocess_env, wait_until
from tests.ocap_daemon.test_controller import _config
from tests.ocap_daemon.test_ocapd import start, write_ini

DAEMON_TYPES = {"ocap_phase": "stateset", "ocap_worker_state": "stateset", "ocap_personalization_paused": "gauge",
                "ocap_personalizations_started": "counter", "ocap_personalizations": "counter",
                "ocap_probations": "counter", "ocap_rollbacks": "counter", "ocap_reverts": "counter",
                "ocap_worker_pauses": "counter", "ocap_temperature_celsius": "gauge",
                "ocap_memory_available_bytes": "gauge"}


def families(text, fmt="openmetrics"):
    return {f.name: f for f in (parse_openmetrics if fmt == "openmetrics" else parse_prometheus)(text)}


def values(fams, name):
    """{frozenset of labels: value} of a family's samples."""
    return {frozenset(s.labels.items()): s.value for s in fams[name].samples}


def one(fams, name, sample=None):
    (v,) = [s.value for s in fams[name].samples if s.name == (sample or name)]
    return v


# ---- in process: the collector on a real Server and Controller ----------------------------------------

def _daemon_metrics(state: Path, thermal: Path):
    cfg = _config(state)
    server = build_server("fmnist-cnn", state, cfg.daemon.socket, cache_dir=cfg.daemon.cache_dir)
    ctl = control_plane(cfg, server, ModelStore(state))
    server.metrics.add(DaemonCollector(ctl, thermal_root=thermal))
    return server, ctl


@pytest.fixture
def thermal(tmp_path, monkeypatch):
    """A faked sysfs thermal tree as the only temperature source (this machine has no sensors)."""
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    zone = tmp_path / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("47500\n")
    return zone.parent


def test_history_counters_come_from_the_events_table_and_survive_a_restart(tmp_path, thermal):
    state = tmp_path / "state"
    server, ctl = _daemon_metrics(state, thermal)
    try:
        for kind, n, detail in (("personalize_started", 5, {}), ("personalize_failed", 1, {"state": "failed"}),
                                ("gate", 2, {"passed": False, "reason": "agreement"}), ("gate", 2, {"passed": True}),
                                ("deploy_failed", 1, {}), ("deploy", 1, {}), ("probation_failed", 1, {}),
                                ("probation_passed", 1, {}), ("rollback", 2, {}), ("drift", 3, {}),
                                ("worker_paused", 4, {}), ("swap", 6, {})):
            for _ in range(n):
                server.record(kind, **detail)
        first = families(server.metrics.render())
    finally:
        server.stop()
    assert {n: first[n].type for n in DAEMON_TYPES} == DAEMON_TYPES
    assert one(first, "ocap_personalizations_started", "ocap_personalizations_started_total") == 5
    assert values(first, "ocap_personalizations") == {
        frozenset({("outcome", "failed")}): 1, frozenset({("outcome", "rejected")}): 2,
        frozenset({("outcome", "deploy_failed")}): 1, frozenset({("outcome", "deployed")}): 1}
    assert values(first, "ocap_probations") == {frozenset({("outcome", "failed")}): 1,
                                                frozenset({("outcome", "passed")}): 1}
    assert one(first, "ocap_rollbacks", "ocap_rollbacks_total") == 2
    assert values(first, "ocap_reverts") == {frozenset({("cause", "drift")}): 3, frozenset({("cause", "other")}): 0}
    assert one(first, "ocap_worker_pauses", "ocap_worker_pauses_total") == 4
    assert one(first, "ocap_temperature_celsius") == 47.5 and one(first, "ocap_memory_available_bytes") > 0

    server, ctl = _daemon_metrics(state, thermal)                 # a restart: a new process would read the same
    try:
        again = families(server.metrics.render())
    finally:
        server.stop()
    for name in ("ocap_personalizations", "ocap_probations", "ocap_rollbacks", "ocap_reverts", "ocap_worker_pauses"):
        assert values(again, name) == values(first, name), name
    assert one(again, "ocap_requests", "ocap_requests_total") == 0          # in-memory counters start over


def test_phase_and_worker_state_are_state_sets(tmp_path, thermal):
    server, ctl = _daemon_metrics(tmp_path / "state", thermal)
    try:
        fams = families(server.metrics.render())
        assert {s.labels["ocap_phase"]: s.value for s in fams["ocap_phase"].samples} == {
            p.value: float(p is Phase.OBSERVING) for p in Phase}
        assert values(fams, "ocap_worker_state")[frozenset({("ocap_worker_state", "idle")})] == 1
        ctl.phase, ctl.worker, ctl.paused = Phase.PERSONALIZING, SimpleNamespace(state="paused"), True
        fams = families(server.metrics.render())
        assert [s.labels["ocap_phase"] for s in fams["ocap_phase"].samples if s.value] == ["personalizing"]
        assert [s.labels["ocap_worker_state"] for s in fams["ocap_worker_state"].samples if s.value] == ["paused"]
        assert one(fams, "ocap_personalization_paused") == 1
        prom = families(server.metrics.render("prometheus"), "prometheus")     # what node_exporter can read
        assert prom["ocap_phase"].type == "gauge" and prom["ocap_worker_state"].type == "gauge"
    finally:
        ctl.worker = None
        server.stop()


# ---- the textfile --------------------------------------------------------------------------------------

def test_the_textfile_is_replaced_whole_with_mode_0644_under_the_daemons_umask(tmp_path):
    path = tmp_path / "ocap.prom"
    old = os.umask(0o027)                       # ocapd's: nothing else it writes is world-readable
    try:
        write_textfile(path, "ocap_a 1\n")
        with open(path) as before:              # a reader holding the old file
            ino = os.fstat(before.fileno()).st_ino
            write_textfile(path, "ocap_a 2\n")
            assert before.read() == "ocap_a 1\n"  # replaced, not rewritten in place
    finally:
        os.umask(old)
    assert path.read_text() == "ocap_a 2\n" and os.stat(path).st_ino != ino
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["ocap.prom"]   # no temporary file left


def test_a_failing_write_is_logged_once_naming_the_file_and_recovers(tmp_path, caplog):
    path = tmp_path / "missing" / "ocap.prom"
    tf = Textfile(path, lambda: "ocap_a 1\n")
    with caplog.at_level(logging.INFO, logger="ocap_daemon.metrics"):
        assert not tf.write() and not tf.write()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(path) in errors[0].getMessage() and tf.error
        path.parent.mkdir()
        assert tf.write() and tf.error is None and path.read_text() == "ocap_a 1\n"
        assert "written again" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("textfile,named", [
    ("ocap.prom", "expected an absolute path"),
    ("/{tmp}/ocap.txt", "ending in .prom"),
    ("/{tmp}/nowhere/ocap.prom", "no directory"),
])
def test_a_bad_textfile_setting_is_a_one_line_config_error(tmp_path, textfile, named):
    ini = write_ini(tmp_path, metrics={"textfile": textfile.format(tmp=str(tmp_path).strip("/"))})
    with pytest.raises(ConfigError, match=named) as e:
        load_config(ini)
    assert "[metrics] textfile" in str(e.value) and "\n" not in str(e.value)


# ---- a real ocapd ----------------------------------------------------------------------------------------

def test_ocapd_answers_metrics_on_its_socket_and_writes_the_textfile(tmp_path):
    tdir = tmp_path / "textfile"
    tdir.mkdir()
    ini = write_ini(tmp_path, metrics={"textfile": str(tdir / "ocap.prom"), "interval": "1s"})
    frames = load_dataset("fashion-mnist", "test").x[:20]
    daemon = start(tmp_path, ini)
    try:
        with Client(tmp_path / "s.sock") as c:
            for x in frames:
                c.predict(x)
            scraped = families(c.call("metrics")["text"])
        assert {n: scraped[n].type for n in DAEMON_TYPES if n != "ocap_temperature_celsius"} == {
            n: t for n, t in DAEMON_TYPES.items() if n != "ocap_temperature_celsius"}
        served = [s.value for s in scraped["ocap_predictions"].samples if s.labels["origin"] == "served"]
        assert sum(served) == 20 and one(scraped, "ocap_requests", "ocap_requests_total") == 20

        def textfile():
            fams = families((tdir / "ocap.prom").read_text(), "prometheus") if (tdir / "ocap.prom").exists() else {}
            return fams if fams and one(fams, "ocap_requests", "ocap_requests_total") == 20 else None

        written = wait_until(textfile, WAIT_S, what="a textfile that counts the 20 requests")
        prom = families(daemon.request("metrics", format="prometheus")["text"], "prometheus")
        assert {n: f.type for n, f in written.items()} == {n: f.type for n, f in prom.items()}
        assert oct(os.stat(tdir / "ocap.prom").st_mode & 0o777) == oct(0o644)
        assert daemon.request("status")["metrics"] == {"textfile": str(tdir / "ocap.prom"), "error": None}
        # the metrics go out through the Unix socket and a file only
        assert psutil.Process(daemon.pid).net_connections(kind="inet") == []
        # a reload moves the textfile
        moved = tmp_path / "moved" / "ocap.prom"
        moved.parent.mkdir()
        write_ini(tmp_path, metrics={"textfile": str(moved), "interval": "1s"})
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(moved.exists, WAIT_S, what="the textfile at its new path")
        assert [p.name for p in tdir.iterdir()] == ["ocap.prom"]            # no temporary file left
        # its directory goes away: an error in the log and in status, and serving goes on
        shutil.rmtree(str(moved.parent))
        wait_until(lambda: daemon.request("status")["metrics"]["error"], WAIT_S, what="a failed write in status")
        assert f"metrics textfile {moved} not written" in daemon.log_tail(20000)
        human = captured([sys.executable, "-m", "ocap_service.ctl", "--socket", str(tmp_path / "s.sock"), "status"],
                         cwd=str(ROOT), env=subprocess_env(), timeout=60)
        assert f"metrics   textfile {moved} not written" in human.stdout, human.stdout + human.stderr
        with Client(tmp_path / "s.sock") as c:
            assert c.predict(frames[0])["class_id"] in range(10)
    finally:
        assert daemon.stop() == 0, daemon.log_tail()


def test_ocapctl_metrics_prints_the_scrape(tmp_path):
    daemon = start(tmp_path, write_ini(tmp_path))
    try:
        out = {}
        for fmt in ("openmetrics", "prometheus"):
            r = captured([sys.executable, "-m", "ocap_service.ctl", "--socket", str(tmp_path / "s.sock"), "metrics",
                          "--format", fmt], cwd=str(ROOT), env=subprocess_env(),
                         timeout=60)
            assert r.returncode == 0, r.stderr
            out[fmt] = families(r.stdout, fmt)
        assert "ocap_phase" in out["openmetrics"] and out["openmetrics"]["ocap_phase"].type == "stateset"
        assert set(out["prometheus"]) >= {"ocap_phase", "ocap_model_info", "ocap_requests"}
    finally:
        assert daemon.stop() == 0, daemon.log_tail()


def test_the_readme_lists_every_metric(tmp_path, thermal):
    """README's table of metrics and a scrape name the same metrics (as PromQL names them)."""
    import re

    server, _ = _daemon_metrics(tmp_path / "state", thermal)
    try:
        fams = families(server.metrics.render())
    finally:
        server.stop()
    suffix = {"counter": "_total", "info": "_info"}
    scraped = {n + suffix.get(f.type, "") for n, f in fams.items() if not n.startswith("ocap_process_")}
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Metrics", 1)[1].split("\n## ", 1)[0]
    rows = [ln.split("|")[1] for ln in section.splitlines() if ln.startswith("| `ocap_")]
    listed = {n for cell in rows for n in re.findall(r"`(ocap_\w+)`", cell)}
    assert listed == scraped and any("`ocap_process_*`" in r for r in rows)
