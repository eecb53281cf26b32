"""``ocapd``: the daemon. Start: config -> database -> model store recovery -> load -> socket ->
sources -> scheduler -> ``READY=1``. SIGHUP re-reads the config (a bad file is logged, the old one
stays); SIGTERM/SIGINT stop sources, scheduler and worker, flush and close within a bounded time.
Exit codes: 0 clean stop, 1 start failed, 78 bad configuration (systemd does not restart on it)."""

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from ocap_core.errors import OcapError
from ocap_service.errors import ServiceError
from ocap_service.event_kinds import Event
from ocap_service.server import Server, ServerConfig, serving_parts
from ocap_service.sources import ThreadSource

from .config import EXIT_CONFIG, Config, ConfigError, load_config
from .controller import Controller, StartWorker
from .deployer import Deployer
from .errors import DaemonError
from .metrics import DaemonCollector, Textfile
from .notify import Notifier
from .sources import Checked, build_sources, check_sources, replay_shortfalls
from .store import ModelStore
from .supervisor import WorkerRun
from .trigger import Trigger

log = logging.getLogger("ocapd")
DEFAULT_CONFIG = "/etc/ocap/ocap.ini"
EXIT_OK, EXIT_FAILED = 0, 1
RESTART_SECTIONS = ("daemon", "model", "sources", "privacy", "store")
QUIET_LOGGERS = ("apscheduler.scheduler", "apscheduler.executors.default")   # a line per job run at info
# seconds kept beyond the longest span a check reads: a probation still pending past its duration reads
# back to its start, and a batch may arrive a few seconds late
RECENT_MARGIN = 600
TRT_CACHE = "trt"           # TensorRT's engines, under [daemon] cache_dir


def recent_seconds(cfg: Config) -> int:
    """How many seconds of per-second counts (``RecentCounts``) the policy checks need: the longest
    span any of them reads (stability window x windows, the drift window, the probation duration)
    plus ``RECENT_MARGIN``. A fixed hour made ``window = 30min, windows = 3`` never stable. Memory
    grows with it: about 13-16 MB for a 3-hour span at 10 classes (see ``ocap_service/recent_counts.py``)."""
    longest = max(cfg.stability.window * cfg.stability.windows, cfg.drift.window, cfg.probation.duration)
    return int(math.ceil(longest)) + RECENT_MARGIN


def server_config(cfg: Config) -> ServerConfig:
    """The serving plane's settings. ``[model] providers = auto`` is resolved here, against the installed
    onnxruntime; TensorRT's engine cache goes under ``[daemon] cache_dir`` (``trt/``)."""
    from ocap_core.runtime import resolve_providers

    return ServerConfig(providers=resolve_providers(cfg.model.providers), threads=cfg.model.threads,
                        trt_cache_dir=str(Path(cfg.daemon.cache_dir) / TRT_CACHE), trt_fp16=cfg.model.tensorrt_fp16,
                        flush_seconds=cfg.log.flush_interval, low_confidence=cfg.log.low_confidence,
                        recent_seconds=recent_seconds(cfg),
                        cache_per_class=cfg.personalize.samples_per_class, cache_quota=cfg.privacy.cache_quota,
                        cache_val_share=cfg.privacy.held_back_share,
                        teacher_share=cfg.drift.teacher_share, max_connections=cfg.daemon.max_connections,
                        max_payload=cfg.daemon.max_payload,
                        allowed_gids=frozenset() if cfg.daemon.group is None else frozenset([cfg.daemon.group]))


def control_plane(cfg: Config, server: Server, store: ModelStore, on_state: Optional[Callable[[str], None]] = None,
                  clock: Callable[[], float] = time.time, start_worker: StartWorker = WorkerRun) -> Controller:
    """The control plane around a built ``server``, wired by the composition root (``Daemon.start``, and
    the tests that run the policy in-process): the deployer (what serves), the trigger (when to
    personalize; it reads the controller's config, which a reload replaces), the controller (the
    policy), its commands on the server's socket and its part of ``status``."""
    deployer = Deployer(server, store, clock)
    trigger = Trigger(lambda: ctl.cfg, server, clock)
    ctl = Controller(cfg, server, deployer, trigger, on_state=on_state, clock=clock, start_worker=start_worker)
    server.control.register_all(ctl.handlers())
    server.add_status("daemon", ctl.describe)
    return ctl


def set_log_level(level: str) -> None:
    """The daemon's log level. APScheduler logs two lines at info for every job run (the policy job runs
    every few seconds): its loggers log from warning up unless the daemon logs at debug."""
    value = getattr(logging, level.upper())
    logging.getLogger().setLevel(value)
    for name in QUIET_LOGGERS:        # a logger's own level, not the root's, filters what it propagates
        logging.getLogger(name).setLevel(logging.NOTSET if value <= logging.DEBUG else max(value, logging.WARNING))


def limit_malloc_arenas(n: int = 2) -> bool:
    """glibc gives each thread that allocates its own malloc arena; with the daemon's threads that took
    ocapd from 90 to 153 MB RSS. ``mallopt(M_ARENA_MAX)`` caps them (as MALLOC_ARENA_MAX= does, which
    the unit also sets); a no-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, n))        # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


class Daemon:
    def __init__(self, cfg: Config, replay_data: Optional[Checked] = None) -> None:
        self.cfg = cfg
        self.replay_data = replay_data          # check_sources' result (replay data and all); None: checked at start
        self.notifier = Notifier()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.server: Optional[Server] = None
        self.controller: Optional[Controller] = None
        self.sources: List[ThreadSource] = []
        self.scheduler: Any = None
        self.textfile: Optional[Textfile] = None        # [metrics] textfile's writer, None when off

    def start(self) -> None:
        from ocap_core.package import resolve_model

        c = self.cfg
        replay_data = check_sources(c) if self.replay_data is None else self.replay_data
        os.umask(0o027)               # as the unit's UMask=: nothing the daemon writes is world-readable
        Path(c.daemon.state_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        Path(c.daemon.cache_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        store = ModelStore(Path(c.daemon.state_dir), keep_versions=c.store.keep_versions)
        base = Path(resolve_model(c.model.base))
        serve, why = store.recover(base)
        log.info("serving %s (%s)", serve, why)
        scfg = server_config(c)
        log.info("execution providers %s (%s)", ", ".join(scfg.providers),
                 "auto: what onnxruntime offers" if not c.model.providers else "[model] providers")
        if "tensorrt" in scfg.providers:
            Path(str(scfg.trt_cache_dir)).mkdir(exist_ok=True, mode=0o700)
        parts = serving_parts(str(serve), Path(c.daemon.state_dir), Path(c.daemon.socket), scfg,
                              base=str(base), cache_dir=Path(c.daemon.cache_dir))
        self.server = server = Server(parts, scfg)
        server.control.register_all(server.handlers())
        server.record(Event.DAEMON_STARTED, serving=server.served.version, recovered=why, config=str(c.path))
        self.controller = control_plane(c, server, store, on_state=self.notifier.status)
        self.controller.deployer.sweep_engines()     # engines of versions gone while ocapd was down
        server.metrics.add(DaemonCollector(self.controller))
        server.add_status("metrics", self._metrics_status)
        server.control.register("reload", self._cmd_reload)
        self.sources = build_sources(c, server, replay_data)
        self.replay_data = None                 # the sources hold what they need
        self.scheduler = self._scheduler()
        server.start()
        for s in self.sources:
            s.start()
        self.scheduler.start()
        self.notifier.ready(self.controller.status_line())
        if self.notifier.watchdog_seconds:
            threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()

    def _scheduler(self) -> Any:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        assert self.controller is not None and self.server is not None
        sched = BackgroundScheduler(timezone="UTC", executors={"default": ThreadPoolExecutor(2)},
                                    job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        sched.add_job(self.controller.tick, "interval", seconds=self.cfg.stability.check_interval, id="policy")
        sched.add_job(self._retention, "interval", seconds=3600, id="retention")
        self._schedule_metrics(sched)
        return sched

    def _schedule_metrics(self, sched: Any) -> None:
        """The ``[metrics] textfile`` job, first run at once (when the scheduler starts): placed at start
        and again on a reload that changes ``[metrics]``; none when the textfile is off."""
        import datetime

        assert self.server is not None
        if sched.get_job("metrics") is not None:
            sched.remove_job("metrics")
        m, server = self.cfg.metrics, self.server
        self.textfile = None if m.textfile is None else Textfile(m.textfile, lambda: server.metrics.render("prometheus"))
        if self.textfile is not None:
            sched.add_job(self.textfile.write, "interval", seconds=m.interval, id="metrics",
                          next_run_time=datetime.datetime.now(datetime.timezone.utc))

    def _metrics_status(self) -> Any:
        t = self.textfile
        return {"textfile": None if t is None else str(t.path), "error": None if t is None else t.error}

    def _retention(self) -> None:
        assert self.server is not None
        n = self.server.retain_counts(max(1, int(self.cfg.log.retention // 60)))
        if n:
            log.info("retention: %d count rows older than %.0f days deleted", n, self.cfg.log.retention / 86400)

    def healthy(self) -> bool:
        """The serving path answers (a blank frame through the served model) and the policy job runs."""
        assert self.server is not None and self.controller is not None
        served = self.server.served
        c, h, w = served.card.input.shape
        try:
            served.predict(np.zeros((h, w, c), np.uint8))
        except OcapError:
            return False
        last = self.controller.last_tick
        return last is None or time.time() - last < 3 * self.cfg.stability.check_interval + 60

    def _watchdog(self) -> None:
        period = (self.notifier.watchdog_seconds or 30.0) / 2
        while not self.stop_requested.wait(period):
            if self.healthy():
                self.notifier.watchdog()
            else:
                log.error("serving path or scheduler unhealthy: no watchdog ping")

    def reload(self) -> None:
        """Re-read the config; apply what can change live, record what needs a restart."""
        assert self.server is not None and self.controller is not None and self.cfg.path is not None
        try:
            new = load_config(self.cfg.path)
            if new.sources != self.cfg.sources:     # applied at the next start: it must be able to start
                check_sources(new)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            self.server.record(Event.CONFIG_REJECTED, reason=str(e))
            return
        restart = [s for s in RESTART_SECTIONS if getattr(new, s) != getattr(self.cfg, s)]
        metrics_changed = new.metrics != self.cfg.metrics
        self.cfg = new
        self.controller.cfg = new
        self.server.reconfigure(teacher_share=new.drift.teacher_share, recent_seconds=recent_seconds(new))
        set_log_level(new.daemon.log_level)
        self.scheduler.reschedule_job("policy", trigger="interval", seconds=new.stability.check_interval)
        if metrics_changed:
            self._schedule_metrics(self.scheduler)
        self.server.record(Event.CONFIG_RELOADED, restart_needed=restart)
        log.info("config reloaded%s", f"; restart needed for [{'], ['.join(restart)}]" if restart else "")

    def _cmd_reload(self, req: Any, _: Any) -> Any:
        self.reload_requested.set()           # the main thread applies it, as for SIGHUP
        return {"reload": "requested"}

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        try:
            self.start()
        except (OcapError, ServiceError, DaemonError) as e:
            log.error("cannot start: %s", e)
            self.shutdown()
            return EXIT_FAILED
        while not self.stop_requested.wait(0.2):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
        self.shutdown()
        return EXIT_OK

    def shutdown(self) -> None:
        self.notifier.stopping()
        for s in self.sources:
            s.stop()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.controller is not None:
            self.controller.stop()
        if self.server is not None:
            self.server.stop()
        log.info("stopped")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ocapd``; quiet (exit 141) when stdout is a pipe closed early (``ocapd --check-config | head -1``)."""
    from ocap_core.closed_pipe import quiet_on_closed_pipe

    return quiet_on_closed_pipe(lambda: _main(argv))


def build_parser() -> argparse.ArgumentParser:
    """``ocapd``'s parser."""
    ap = argparse.ArgumentParser(prog="ocapd", description="the ocap daemon")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"INI file (default {DEFAULT_CONFIG})")
    ap.add_argument("--check-config", action="store_true",
                    help="validate the config file, report every problem in it, and exit")
    return ap


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(Path(args.config))
        replay_data = check_sources(cfg)
    except ConfigError as e:
        lines = str(e).splitlines()
        if len(lines) > 1:
            print(f"ocapd: {len(lines)} problems in the configuration:", *(f"  {x}" for x in lines), sep="\n",
                  file=sys.stderr)
        else:
            print(f"ocapd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    short = replay_shortfalls(cfg, replay_data)
    if args.check_config:
        for line in short:
            print(f"ocapd: warning: {line}", file=sys.stderr)
        print(f"ocapd: {args.config} is valid")
        return EXIT_OK
    logging.basicConfig(level=cfg.daemon.log_level.upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for line in short:
        log.warning("%s", line)
    set_log_level(cfg.daemon.log_level)
    limit_malloc_arenas()
    return Daemon(cfg, replay_data).run()


if __name__ == "__main__":
    sys.exit(main())
