"""The control plane's metrics and the textfile for node_exporter.

``DaemonCollector`` adds to the server's registry (``ocap_service/metrics.py``) what the controller knows: its
phase and the worker's state, personalization outcomes, probations, rollbacks and reverts (counted from
the events table, so they survive restarts), and the resource guard's readings. ``Textfile`` writes the
whole scrape in the Prometheus text format to ``[metrics] textfile`` (tmp file in the same directory,
mode 0644, ``os.replace``), where node_exporter's textfile collector reads it: a daemon without a
network port is scraped that way. A write that fails is logged (once per distinct error), serving goes on.
"""

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from prometheus_client.core import StateSetMetricFamily
from prometheus_client.registry import Collector

from ocap_service.errors import ServiceError
from ocap_service.event_kinds import Event
from ocap_service.metrics import PREFIX, counter, gauge

from . import telemetry
from .deployer import Phase

log = logging.getLogger(__name__)
WORKER_STATES = ("idle", "running", "paused")
# event kind -> the outcome a personalization came to (a gate event splits on its "passed" detail)
OUTCOMES = {Event.PERSONALIZE_FAILED: "failed", (Event.GATE, 0): "rejected", Event.DEPLOY_FAILED: "deploy_failed",
            Event.DEPLOY: "deployed"}
COUNTED = (Event.PERSONALIZE_STARTED, Event.PERSONALIZE_FAILED, Event.GATE, Event.DEPLOY_FAILED, Event.DEPLOY,
           Event.PROBATION_PASSED, Event.PROBATION_FAILED, Event.ROLLBACK, Event.DRIFT, Event.REVERT,
           Event.WORKER_PAUSED)


class DaemonCollector(Collector):
    """The controller's state and history, read at each collect."""

    def __init__(self, controller: Any, thermal_root: Path = telemetry.THERMAL_ROOT) -> None:
        self.controller = controller
        self.thermal_root = thermal_root        # sysfs' thermal zones, the last fallback for the temperature

    def collect(self) -> Iterator[Any]:
        c = self.controller
        phase, worker = c.phase, c.worker           # read each reference once: the policy thread changes them
        yield stateset("phase", "Where the daemon is in its loop.", {p.value: p is phase for p in Phase})
        state = "idle" if worker is None else worker.state
        yield stateset("worker_state", "The personalization worker: none (idle), running or paused (by the resource "
                       "guard or ocapctl pause).", {s: s == state for s in WORKER_STATES})
        yield gauge("personalization_paused", "1 while ocapctl pause holds personalization.",
                    values=[(int(c.paused),)])
        yield from self._history()
        yield gauge("temperature_celsius", "The hottest temperature sensor (the resource guard's reading).",
                    values=[(telemetry.temperature(self.thermal_root),)], unit="celsius")
        yield gauge("memory_available_bytes", "Memory available to start programs (the resource guard's reading).",
                    values=[(telemetry.free_memory(),)], unit="bytes")

    def _history(self) -> Iterator[Any]:
        """Counters from the events table; when it cannot be read, they are left out of this scrape."""
        try:
            n = self.controller.server.event_counts(COUNTED, split="passed")
        except (sqlite3.Error, ServiceError) as e:
            log.error("metrics: the events table could not be read: %s", e)
            return

        def total(kind: str) -> int:
            return sum(v for (k, _), v in n.items() if k == kind)

        yield counter("personalizations_started", "Personalization runs started (all time).",
                      values=[(total(Event.PERSONALIZE_STARTED),)])
        outcomes = dict.fromkeys(OUTCOMES.values(), 0)
        for (kind, passed), v in n.items():
            outcome = OUTCOMES.get(kind) or OUTCOMES.get((kind, passed))
            if outcome:
                outcomes[outcome] += v
        yield counter("personalizations", "Personalization runs by how they ended (all time): the worker failed or "
                      "was stopped, the gate rejected the candidate, deploying it failed, or it was deployed.",
                      ["outcome"], sorted(outcomes.items()))
        yield counter("probations", "Probations of deployed models by verdict (all time).", ["outcome"],
                      [("failed", total(Event.PROBATION_FAILED)), ("passed", total(Event.PROBATION_PASSED))])
        yield counter("rollbacks", "Rollbacks to the last good or the base model (a failed probation, ocapctl "
                      "rollback; all time).", values=[(total(Event.ROLLBACK),)])
        yield counter("reverts", "Reverts to the base model by cause (drift: a class outside the kept set; all time).",
                      ["cause"], [("drift", total(Event.DRIFT)), ("other", total(Event.REVERT))])
        yield counter("worker_pauses", "Times the resource guard paused the worker (all time).",
                      values=[(total(Event.WORKER_PAUSED),)])


def stateset(name: str, doc: str, states: dict) -> StateSetMetricFamily:
    """An OpenMetrics state set ``ocap_NAME`` (a gauge per state in the Prometheus text format)."""
    return StateSetMetricFamily(f"{PREFIX}_{name}", doc, value=states)


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a reader sees the old file or the new one, never half.
    The temporary name does not end in ``.prom``, so node_exporter never reads it. Mode 0644 whatever
    the umask (node_exporter runs as another user). No fsync: a file lost to a power cut is rewritten
    within one interval."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
        os.replace(str(tmp), str(path))
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


class Textfile:
    """Writes ``render()`` to ``path`` on each ``write``; failures are logged once until they change."""

    def __init__(self, path: Path, render: Callable[[], str]) -> None:
        self.path, self.render = Path(path), render
        self.error: Optional[str] = None            # the last write's failure, None after a success

    def write(self) -> bool:
        try:
            write_textfile(self.path, self.render())
        except OSError as e:
            why = f"{e.strerror or e}"
            if why != self.error:
                log.error("metrics textfile %s not written: %s ([metrics] textfile: its directory must exist and be "
                          "writable by ocapd; under systemd, also listed in the unit's ReadWritePaths=)", self.path, why)
            self.error = why
            return False
        if self.error is not None:
            log.info("metrics textfile %s written again", self.path)
            self.error = None
        return True
