"""Runs the personalization worker as a low-priority subprocess and keeps track of it: progress from
its JSON lines, pause (SIGSTOP) and resume (SIGCONT), a time budget in seconds of work and a wall
limit, kill on shutdown. The job directory (job file, samples, candidate) is the worker's scratch
space; the caller removes it."""

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ocap_core.work_clock import work_seconds

from .cores import PASSIVE_OPENMP, THREAD_VARS
from .errors import DaemonError
from .job import Job

log = logging.getLogger(__name__)
Listener = Callable[[Dict[str, Any]], None]
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _lower_priority(nice: int) -> Callable[[], None]:
    def apply() -> None:                     # runs in the child between fork and exec
        os.nice(nice)
        try:
            import psutil

            psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
        except Exception:  # idle I/O class is best effort (not every kernel / scheduler has it)
            pass
    return apply


def worker_env(job_dir: Path) -> Dict[str, str]:
    """The worker's environment: OpenMP threads wait passively (no spinning at nice 19), the thread
    count is left to the worker (it picks one per idle core when it starts), and every scratch file
    (temp files, torch's caches) stays in the job directory."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(PASSIVE_OPENMP, TMPDIR=str(job_dir), TORCHINDUCTOR_CACHE_DIR=str(job_dir / "torch-cache"),
               PYTHONPATH=os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p))
    return env


STARVED_SHARE = 0.5        # less CPU than half a core over the run: the time went to waiting, say so
STARVED = "other processes kept the cores busy"


WAIT_NOTE_AFTER_S = 20.0   # a worker this young has not had time to show a share


def starved(elapsed: float, cpu_s: Optional[float]) -> bool:
    """Whether a worker had less than ``STARVED_SHARE`` of a core over ``elapsed`` wall seconds (False
    when its CPU time cannot be read)."""
    return cpu_s is not None and cpu_s < STARVED_SHARE * elapsed


def waiting_note(elapsed: float, cpu_s: Optional[float]) -> str:
    """For the status line: `` (kept waiting: C s of CPU in E s)`` when a running worker is ``starved``,
    else empty. Its budget counts work, so it is late, not cut short."""
    if elapsed < WAIT_NOTE_AFTER_S or not starved(elapsed, cpu_s):
        return ""
    return f" (kept waiting: {cpu_s:.0f} s of CPU in {elapsed:.0f} s)"


def stop_reason(budget_s: float, wall_limit_s: float, elapsed: float, cpu_s: Optional[float],
                nice: int) -> Optional[str]:
    """Why a running worker must stop now, or None. ``budget_s`` counts seconds of work
    (``work_seconds`` of its unpaused wall time ``elapsed`` and its CPU time ``cpu_s``; the wall time
    alone when the CPU time cannot be read), so a worker that other processes keep waiting gets its
    budget later rather than less of it; ``wall_limit_s`` bounds that wait. When it got too little
    CPU to have done the work the reason says the machine was busy: what a user needs to know to
    change ``nice``, ``time_budget`` or ``wall_limit``. 0 turns a limit off."""
    worked = elapsed if cpu_s is None else work_seconds(elapsed, cpu_s)
    if budget_s and worked > budget_s:
        why = f"over its time budget of {budget_s:.0f} s"
    elif wall_limit_s and elapsed > wall_limit_s:
        why = f"still running at its wall limit of {wall_limit_s:.0f} s"
    else:
        return None
    if starved(elapsed, cpu_s):
        why += (f"; it got {cpu_s:.1f} s of CPU in {elapsed:.0f} s at nice {nice}: {STARVED} "
                f"(see [personalize] nice and wall_limit)")
    return why


def next_stage(finished: str, job: Job) -> str:
    """The stage a worker is in once it reported ``finished`` (empty: none yet). The worker reports each
    stage of ``ocap_core.personalize`` as it ends (load, teacher, score, select, then search, or prune and
    finetune, then export), then its INT8 child's (quantize); the stage after the last is the one a
    worker that dies was in."""
    after = {"": "load", "load": "teacher", "teacher": "score", "score": "select",
             "select": "search" if job.rule == "search" else "prune", "prune": "finetune",
             "search": "export", "finetune": "export",
             "export": "quantize" if job.quantize == "int8" else "writing the candidate",
             "quantize": "writing the candidate"}
    return after.get(finished, f"after {finished}")


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11; ``signal N`` for a number this platform has no name for."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class WorkerRun:
    """One worker process. ``state``: running, paused, done, failed (it reported an error or exited
    non-zero), killed (by the daemon: a budget, shutdown) or crashed (a signal the daemon did not send:
    a native crash such as SIGSEGV, glibc's SIGABRT, the kernel's OOM SIGKILL; ``signal`` names it and
    ``stage`` says where it was). ``threads``, when given,
    is the job's thread cap (0: auto, one per idle core); the worker chooses within it and reports the
    count in its ``started`` line."""

    def __init__(self, job: Job, job_dir: Path, nice: int = 19, threads: Optional[int] = None,
                 budget_s: float = 0.0, wall_limit_s: float = 0.0, on_event: Optional[Listener] = None) -> None:
        if threads is not None:
            job = dataclasses.replace(job, threads=threads)
        self.job, self.job_dir, self.budget_s, self.wall_limit_s, self.nice = job, Path(job_dir), budget_s, wall_limit_s, nice
        self.events: List[Dict[str, Any]] = []
        self.last: Dict[str, Any] = {}
        self.result: Optional[Dict[str, Any]] = None
        self.threads: Optional[int] = None          # what the worker chose, from its started line
        self.state = "running"
        self.reason = ""
        self.signal = ""                 # the signal that ended a crashed worker
        self.stage = "starting"          # the stage it is in (``next_stage``), and where in it (``detail``)
        self.detail = ""
        self._on_event = on_event
        self._paused_since: Optional[float] = None
        self._paused_total = 0.0
        self.job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        job_file = self.job_dir / "job.json"
        job.write(job_file)
        env = worker_env(self.job_dir)
        self.started = time.monotonic()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "ocap_daemon.worker", str(job_file)], stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, env=env, preexec_fn=_lower_priority(nice),
                                         cwd=str(self.job_dir))
        except OSError as e:
            raise DaemonError(f"cannot start the personalization worker: {e}") from e
        self._reader = threading.Thread(target=self._read, name="worker-progress", daemon=True)
        self._reader.start()
        log.info("worker %d started for classes %s", self.proc.pid, list(job.classes))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                ev = json.loads(raw.decode("utf-8"))
            except ValueError:
                log.info("worker: %s", raw.decode("utf-8", "replace").rstrip())
                continue
            if not isinstance(ev, dict):
                continue
            self.events.append(ev)
            self.last = ev
            kind = ev.get("event")
            if kind == "done":
                self.result = ev
            elif kind == "started":
                self.threads = ev.get("threads")
                self.stage = next_stage("", self.job)
            elif kind == "stage":
                self.stage, self.detail = next_stage(str(ev.get("stage")), self.job), ""
            elif kind == "search_level":
                self.detail = f"level {ev.get('level')}x"
            elif kind == "finetune_epoch":
                self.detail = f"fine-tuning epoch {ev.get('epoch')}/{ev.get('epochs')}"
            if self._on_event:
                try:
                    self._on_event(ev)
                except Exception:
                    log.exception("worker event listener failed")

    @property
    def elapsed(self) -> float:
        """Wall seconds running, not counting time paused."""
        paused = self._paused_total + (time.monotonic() - self._paused_since if self._paused_since else 0.0)
        return time.monotonic() - self.started - paused

    def poll(self) -> Optional[str]:
        """The final state once the process has ended (kills it first when over budget), else None."""
        if self.state in ("done", "failed", "killed", "crashed"):
            return self.state
        if self.state == "running" and (self.budget_s or self.wall_limit_s):
            why = stop_reason(self.budget_s, self.wall_limit_s, self.elapsed, self.cpu_seconds(), self.nice)
            if why:
                self.kill(why)
                return self.state
        code = self.proc.poll()
        if code is None:
            return None
        self._reader.join(timeout=5)
        if code == 0 and self.result is not None:
            self.state = "done"
        elif code < 0:
            self.state, self.signal = "crashed", signal_name(-code)
            where = f"{self.stage}, {self.detail}" if self.detail else self.stage
            self.reason = f"worker killed by {self.signal} (signal {-code}) in stage {where}"
            log.error("worker %d %s", self.proc.pid, self.reason[len("worker "):])
        else:
            self.state = "failed"
            self.reason = str(self.last.get("error") or f"worker exited with code {code}")
        return self.state

    def cpu_seconds(self) -> Optional[float]:
        """CPU seconds the worker (and its threads) has had so far; None when it cannot be read."""
        try:
            import psutil

            t = psutil.Process(self.proc.pid).cpu_times()
            return float(t.user + t.system)
        except Exception:      # gone, or psutil missing: the budget message goes without it
            return None

    @property
    def note(self) -> str:
        """``waiting_note`` of this run while it is running, else empty."""
        return waiting_note(self.elapsed, self.cpu_seconds()) if self.state == "running" else ""

    def pause(self, why: str) -> bool:
        if self.state != "running" or self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGSTOP)
        self.state, self.reason, self._paused_since = "paused", why, time.monotonic()
        log.info("worker %d paused: %s", self.proc.pid, why)
        return True

    def resume(self) -> bool:
        if self.state != "paused":
            return False
        self.proc.send_signal(signal.SIGCONT)
        self._paused_total += time.monotonic() - (self._paused_since or time.monotonic())
        self.state, self.reason, self._paused_since = "running", "", None
        log.info("worker %d resumed", self.proc.pid)
        return True

    def kill(self, why: str) -> None:
        """Stop the worker now (SIGKILL; a stopped process dies too) and wait for it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        self.state, self.reason = "killed", why
        log.warning("worker %d killed: %s", self.proc.pid, why)

    def describe(self) -> Dict[str, Any]:
        last = {k: v for k, v in self.last.items() if k in ("event", "stage", "epoch", "epochs", "val", "seconds",
                                                            "level", "mac_reduction", "loss_pp", "accepted")}
        cpu = self.cpu_seconds() if self.proc.poll() is None else None
        return {"pid": self.proc.pid, "state": self.state, "reason": self.reason, "stage": self.stage,
                "elapsed_s": round(self.elapsed, 1),
                "cpu_s": None if cpu is None else round(cpu, 1),     # far below elapsed_s: it is kept waiting
                "classes": list(self.job.classes), "threads": self.threads, "last": last}
