"""Issue 14: the per-second counts the policy checks read (``RecentCounts``) are sized from the config.
They kept a fixed hour, so ``[stability] window = 30min, windows = 3`` could never become stable: the
oldest window was always empty."""

import logging
import types
from pathlib import Path

from ocap_daemon import stability
from ocap_daemon.config import Config, load_config
from ocap_daemon.main import QUIET_LOGGERS, RECENT_MARGIN, Daemon, recent_seconds, server_config
from ocap_service.class_log import ClassLog
from ocap_service.recent_counts import RecentCounts
from ocap_service.server import ServerConfig, build_server

T0 = 1_000_000


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "ocap.ini"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _assess_after_steady_traffic(tmp_path: Path, cfg: Config, keep: int) -> stability.Stability:
    """A real ClassLog on a driven clock gets the same mix every second for window x windows, then the
    stability policy judges the windows RecentCounts gives, as the controller does."""
    s = cfg.stability
    now = [float(T0)]
    log = ClassLog(tmp_path / f"ocap-{keep}.db", clock=lambda: now[0], recent_seconds=keep)
    try:
        span = int(s.window * s.windows)
        for second in range(T0, T0 + span):
            now[0] = second + 0.5
            log.add([0, 0, 3, 7], [0.9, 0.9, 0.9, 0.9], "v1")
        now[0] = T0 + span
        windows = log.recent.series(s.window, s.windows)
    finally:
        log.close()
    return stability.assess(windows, s)


def test_half_hour_windows_three_of_them_become_stable(tmp_path):
    cfg = _config(tmp_path, "[stability]\nwindow = 30min\nwindows = 3\n")
    keep = server_config(cfg).recent_seconds
    assert keep == recent_seconds(cfg) == 3 * 1800 + RECENT_MARGIN
    verdict = _assess_after_steady_traffic(tmp_path, cfg, keep)
    assert verdict.stable, verdict.describe()
    assert verdict.classes == frozenset([0, 3, 7])
    # what it was before: a fixed hour leaves the oldest half-hour window empty, never stable
    old = _assess_after_steady_traffic(tmp_path, cfg, ServerConfig().recent_seconds)
    assert not old.stable and "earlier window has 0 predictions" in old.reason


def test_the_longest_check_sets_the_span(tmp_path):
    cfg = _config(tmp_path, "[stability]\nwindow = 1min\nwindows = 2\n[drift]\nwindow = 20min\n"
                            "[probation]\nduration = 2h\n")
    assert recent_seconds(cfg) == 7200 + RECENT_MARGIN
    cfg = _config(tmp_path, "[stability]\nwindow = 1min\nwindows = 2\n[drift]\nwindow = 20min\n"
                            "[probation]\nduration = 5min\n")
    assert recent_seconds(cfg) == 1200 + RECENT_MARGIN


def test_the_server_keeps_what_ocapd_asks_for(tmp_path):
    cfg = _config(tmp_path, "[stability]\nwindow = 1h\nwindows = 3\n")
    srv = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock", server_config(cfg))
    try:
        assert srv.class_log.recent.keep_seconds == 3 * 3600 + RECENT_MARGIN
    finally:
        srv.stop()


def test_resize_shrinks_at_once_and_grows_from_then_on():
    rc = RecentCounts(keep_seconds=100, clock=lambda: 300.0)
    for s in range(100, 300):
        rc.add(s, "served", [1], low=0)
    assert rc.window(1000)[0] == {1: 100}
    rc.resize(10)
    assert rc.window(1000)[0] == {1: 10}
    rc.resize(50)
    for s in range(300, 340):
        rc.add(s, "served", [1], low=0)
    assert rc.window(1000, end=340)[0] == {1: 50}


def test_a_reload_resizes_the_counts(tmp_path):
    cfg = _config(tmp_path, "[stability]\nwindow = 30min\nwindows = 3\n")
    d = Daemon(cfg, replay_data={})
    d.server = srv = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock", server_config(cfg))
    # stand-ins for what reload also touches and this test does not build (the policy, the scheduler)
    d.controller = types.SimpleNamespace(cfg=cfg)
    d.scheduler = types.SimpleNamespace(reschedule_job=lambda *a, **k: None)
    (tmp_path / "ocap.ini").write_text("[stability]\nwindow = 1h\nwindows = 4\n[drift]\nteacher_share = 0.3\n",
                                       encoding="utf-8")
    saved = {n: logging.getLogger(n).level for n in ["", *QUIET_LOGGERS]}
    try:
        d.reload()                    # also sets the log level: put it back after
        assert srv.recent.keep_seconds == srv.config.recent_seconds == 4 * 3600 + RECENT_MARGIN
        assert srv.config.teacher_share == 0.3
        assert srv.recent_events(5, kinds=["config_reloaded"])
    finally:
        srv.stop()
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
