"""The control plane's policy around a running ``Server``: when the ``Trigger`` says so it personalizes
in a worker process, has the candidate judged (``precision.judge``: the INT8 choice, then the gate), has
the ``Deployer`` serve it and watch it on probation, reverts on drift, and answers the mutating commands
(personalize, rollback, pause, resume). ``tick`` does one round of all checks; the scheduler calls it.
What serves and the ways back belong to the deployer, what status shows to ``status.py``; this module
decides when."""

import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ocap_core.runtime import trim_heap
from ocap_core.search_spec import MIN_PER_CLASS
from ocap_core.selection import with_outside
from ocap_service import faults
from ocap_service.control_socket import Handler, RequestError
from ocap_service.errors import ServiceError
from ocap_service.event_kinds import Event
from ocap_service.model_slot import LoadedModel
from ocap_service.server import Server

from . import precision, status, telemetry, watch
from .config import Config
from .deployer import Deployer, Phase, Probation
from .errors import DaemonError
from .job import Job, write_samples
from .supervisor import WorkerRun
from .trigger import Plan, Trigger

StartWorker = Callable[..., WorkerRun]       # WorkerRun's signature: (job, job_dir, nice=, threads=, budget_s=, wall_limit_s=, on_event=)

log = logging.getLogger(__name__)
SEARCH_SHARE = 0.5            # of [personalize] time_budget, for the search (the rest: load, score, export)
SEARCH_LEVEL_FIELDS = ("level", "mac_reduction", "agreement", "loss_pp", "accepted", "seconds")


class Controller:
    """Built by ``control_plane`` (the composition root's helper), which hands it the deployer and the
    trigger and registers its commands (``handlers``)."""

    def __init__(self, cfg: Config, server: Server, deployer: Deployer, trigger: Trigger,
                 on_state: Optional[Callable[[str], None]] = None, clock: Callable[[], float] = time.time,
                 start_worker: StartWorker = WorkerRun) -> None:
        self.cfg, self.server = cfg, server             # the server owns the base model (server.base)
        self.deployer, self.trigger = deployer, trigger
        self.clock = clock
        self._on_state = on_state
        self._start_run = start_worker
        self._lock = threading.RLock()
        self.jobs_dir = Path(cfg.daemon.state_dir) / "jobs"
        self.paused = False
        self.phase = Phase.OBSERVING if server.teacher is None else Phase.PERSONALIZED
        self.worker: Optional[WorkerRun] = None
        self.drift_baseline = 0.0               # outside-the-kept-set share expected without drift
        self._pending_baseline = 0.0
        self.last_tick: Optional[float] = None
        self.last_error = ""
        self.last_outcome = ""                  # why the last personalization came to nothing (status line)
        self.last_wait = ""                     # why a stable set has not started one yet (status line)
        shutil.rmtree(self.jobs_dir, ignore_errors=True)         # scratch of a worker from before a crash

    def handlers(self) -> Dict[str, Handler]:
        """The socket commands the controller answers (declared in ocap_service/commands.py)."""
        return {"personalize": self._cmd_personalize, "rollback": self._cmd_rollback, "pause": self._cmd_pause,
                "resume": self._cmd_resume}

    @property
    def probation(self) -> Optional[Probation]:
        """The deployed model on trial, if any (the deployer's record)."""
        return self.deployer.probation

    # -- one round of checks -----------------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            try:
                self._tick()
            except Exception as e:  # a policy bug must not stop serving; it is logged and recorded
                log.exception("control tick failed")
                self.last_error = f"{type(e).__name__}: {e}"
            self.last_tick = self.clock()

    def _tick(self) -> None:
        if self.worker is not None:
            self._watch_worker()
        if self.server.teacher is not None:
            if self._check_drift():
                return
            if self.probation is not None:
                self._check_probation()
        if self.worker is None and not self.paused:
            ok, why, plan = self.trigger.evaluate()
            st = self.trigger.last_stability
            stable = st is not None and st.stable
            self.last_wait = why if stable and not ok else ""
            if ok:
                self.start_worker(plan, why="stable")

    def _set_phase(self, phase: Phase) -> None:
        if phase != self.phase:
            log.info("phase %s -> %s", self.phase, phase)
            self.phase = phase
            if self._on_state:
                self._on_state(self.status_line())

    # -- the worker ------------------------------------------------------------------------------
    def start_worker(self, plan: Plan, why: str) -> Dict[str, Any]:
        """Export the cached samples of the planned classes and start the worker on them; a failure
        (a full disk, a worker that cannot start) is an event, and the daemon goes on observing."""
        try:
            return self._start_worker(plan, why)
        except (OSError, DaemonError, ServiceError) as e:
            shutil.rmtree(self.jobs_dir, ignore_errors=True)
            self.worker = None
            self.trigger.cool_down(self.cfg.personalize.cooldown)
            self.server.record(Event.PERSONALIZE_FAILED, state="not started", reason=f"{type(e).__name__}: {e}")
            self.last_outcome = f"personalization not started: {e}"
            self._set_phase(Phase.OBSERVING)
            return {"started": False, "reason": str(e)}

    def _start_worker(self, plan: Plan, why: str) -> Dict[str, Any]:
        faults.point("policy.trigger")
        p = self.cfg.personalize
        job_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.clock()))
        job_dir = self.jobs_dir / job_id
        job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        samples = job_dir / "samples.npz"
        n_train, n_val = write_samples(samples, self.server.cached("train"), self.server.cached("val"),
                                       plan.classes, plan.outside_share)
        trim_heap()            # the export's arrays (every cached image) are freed: give the pages back
        faults.point("policy.samples_written")
        # resolved: the worker runs in its job directory, where a relative path means nothing
        job = Job(base=str(Path(self.server.base.path).resolve()), samples=str(samples), classes=plan.classes,
                  class_freqs=dict(plan.class_freqs), out=str(job_dir / "candidate"), scorer=p.scorer,
                  rule=p.rule, max_loss=p.max_loss, epochs=p.epochs, time_budget=max(1.0, SEARCH_SHARE * p.time_budget),
                  min_per_class=min(MIN_PER_CLASS, p.min_samples_per_class), threads=p.threads,
                  name=f"{self.server.base.card.name}-k{len(plan.classes)}", quantize=p.quantize, cascade=p.cascade)
        self._pending_baseline = plan.outside_share
        self.trigger.started()
        self.worker = self._start_run(job, job_dir, nice=p.nice, threads=p.threads, budget_s=p.time_budget,
                                      wall_limit_s=p.wall_limit, on_event=self._worker_event)
        faults.point("policy.worker_started")
        self.server.record(Event.PERSONALIZE_STARTED, classes=list(plan.classes), why=why,
                           samples={"train": n_train, "val": n_val}, stability=plan.stability, pid=self.worker.proc.pid)
        self.last_outcome = ""
        self._set_phase(Phase.PERSONALIZING)
        return {"started": True, "classes": list(plan.classes), "pid": self.worker.proc.pid}

    def _worker_event(self, ev: Dict[str, Any]) -> None:
        if ev.get("event") == "stage":
            self.server.record(Event.PERSONALIZE_PROGRESS, stage=ev.get("stage"), seconds=ev.get("seconds"),
                               peak_rss_mb=ev.get("peak_rss_mb"))
        elif ev.get("event") == "search_level":
            self.server.record(Event.SEARCH_LEVEL, **{k: ev.get(k) for k in SEARCH_LEVEL_FIELDS})

    def _watch_worker(self) -> None:
        w = self.worker
        assert w is not None
        state = w.poll()
        if state is None:
            self._guard_resources(w)
            return
        self.worker = None
        self.trigger.cool_down(self.cfg.personalize.cooldown)
        try:
            if state != "done":
                failure = {"state": state, "reason": w.reason, "elapsed_s": round(w.elapsed, 1)}
                if state == "crashed":       # the same job would crash the same way: back off, say so
                    wait = self.trigger.crashed(self.cfg.personalize.cooldown, f"{w.signal} in stage {w.stage}")
                    failure.update(signal=w.signal, stage=w.stage, crashes=self.trigger.crashes, backoff_s=round(wait))
                else:
                    self.trigger.no_crash()
                self.server.record(Event.PERSONALIZE_FAILED, **failure)
                note = self.trigger.crash_note()
                self.last_outcome = f"personalization {state}: {w.reason}" + (f"; {note}" if note else "")
                self._set_phase(Phase.OBSERVING)
                return
            self.trigger.no_crash()
            res = w.result or {}
            faults.point("policy.worker_done")
            self.server.record(Event.PERSONALIZE_FINISHED, version=res.get("version"),
                               metrics=res.get("metrics"), timings=res.get("timings"),
                               **{k: res[k] for k in ("int8", "int8_error") if k in res})
            self._gate_and_deploy(Path(res["candidate"]), w.job.classes, (res.get("int8") or {}).get("candidate"))
        finally:
            shutil.rmtree(w.job_dir, ignore_errors=True)
            self.deployer.sweep_engines()         # a rejected candidate's, a pruned version's
            if self.cfg.privacy.after_personalize == "purge":
                n = self.server.forget_samples()
                self.server.record(Event.SAMPLES_FORGOTTEN, samples=n, why="privacy.after_personalize = purge")

    def _guard_resources(self, w: WorkerRun) -> None:
        problem = telemetry.resource_problem(self.cfg.personalize, self.server.request_stats())
        if problem and w.state == "running":
            w.pause(problem)
            self.server.record(Event.WORKER_PAUSED, reason=problem)
        elif not problem and w.state == "paused" and not self.paused:
            w.resume()
            self.server.record(Event.WORKER_RESUMED)

    def _gate_and_deploy(self, candidate: Path, classes: Sequence[int], int8: Optional[str] = None) -> None:
        self._set_phase(Phase.GATING)
        x_val, y_val = self.server.cached("val")
        # judged as the worker's search judged: the kept classes' frames and the stream's share of others
        judged = with_outside(y_val, classes, "val", self._pending_baseline)
        verdict, choice = precision.judge(str(candidate), int8, self.server.served, self.server.base, x_val[judged],
                                          y_val[judged], self.cfg.gate.resolved(self.cfg.personalize.max_loss),
                                          self.cfg.personalize.max_loss, **self.server.load_args())
        if choice is not None:
            self.server.record(Event.INT8, kept=choice.int8, reason=choice.reason, **choice.figures)
        self.server.record(Event.GATE, passed=verdict.passed, reason=verdict.reason, **verdict.figures)
        if not verdict.passed or verdict.model is None:
            self.last_outcome = f"gate rejected the candidate: {verdict.reason}"
            self._set_phase(Phase.OBSERVING)
            return
        try:
            ok, reason = self.deploy(verdict.model, why=f"gate passed: {verdict.reason}")
        except (OSError, DaemonError, ServiceError) as e:
            self.server.record(Event.DEPLOY_FAILED, reason=f"{type(e).__name__}: {e}",
                               serving=self.server.served.version)
            self.last_outcome = f"deploy failed: {e}"
            self._set_phase(self._resting_phase())
            return
        if not ok:
            self.last_outcome = f"deploy refused: {reason}"

    def deploy(self, model: LoadedModel, why: str) -> Tuple[bool, str]:
        """Serve ``model`` (the gate's loaded candidate) and put it on probation."""
        ok, reason = self.deployer.deploy(model, why, span=self.cfg.probation.duration,
                                          drift_baseline=self._pending_baseline)
        if not ok:
            self._set_phase(self._resting_phase())
            return ok, reason
        self.drift_baseline = self._pending_baseline
        self._set_phase(Phase.PROBATION)
        return ok, reason

    def _resting_phase(self) -> Phase:
        """The phase when nothing is under way: observing on the base model, personalized otherwise."""
        return Phase.OBSERVING if self.server.teacher is None else Phase.PERSONALIZED

    # -- drift and probation ---------------------------------------------------------------------
    def _check_drift(self) -> bool:
        d = self.cfg.drift
        teacher_hist, _ = self.server.window(d.window, origin="teacher")
        served_hist, served_low = self.server.window(d.window, origin="served")
        kept = set(self.server.served.class_ids)
        why = watch.drift_reason(teacher_hist, kept, served_low, sum(served_hist.values()), d,
                                 baseline=self.drift_baseline)
        if why is None:
            return False
        self.revert(f"drift: {why}", kind=Event.DRIFT)
        self.trigger.cool_down(d.cooldown)
        return True

    def _check_probation(self) -> None:
        verdict, why = self.deployer.check_probation(self.cfg.probation, min_frames=self.cfg.drift.min_checks)
        if verdict == "failed":                   # the deployer rolled back
            self.last_outcome = f"probation failed: {why}"
            self.trigger.restart()
            self._set_phase(self._resting_phase())
        elif verdict == "passed":
            self._set_phase(Phase.PERSONALIZED)

    def revert(self, why: str, kind: str = Event.REVERT) -> None:
        """Serve the base model at once; stability starts over."""
        self.deployer.revert(why, kind)
        self.trigger.restart()
        self._set_phase(Phase.OBSERVING)

    def rollback(self, why: str) -> Dict[str, Any]:
        """Back to ``last_good`` when that is not what serves, else to the base model."""
        serving = self.deployer.rollback(why)
        self.trigger.restart()
        self._set_phase(self._resting_phase())
        return {"serving": serving}

    # -- commands ----------------------------------------------------------------------------------
    def _cmd_personalize(self, req: Dict[str, Any], _: Any) -> Dict[str, Any]:
        with self._lock:
            if self.worker is not None:
                raise RequestError("busy", f"a personalization is already running ({self.worker.describe()['state']})")
            ok, why, plan = self.trigger.evaluate(force=bool(req.get("now")))
            if req.get("dry_run") or not ok:
                if not ok and not req.get("dry_run"):
                    raise RequestError("not_ready", why)
                return {"would_start": ok, "reason": why, **dataclasses.asdict(plan)}
            return self.start_worker(plan, why="ocapctl personalize --now" if req.get("now") else "ocapctl personalize")

    def _cmd_rollback(self, req: Dict[str, Any], _: Any) -> Dict[str, Any]:
        with self._lock:
            return self.rollback("ocapctl rollback")

    def _cmd_pause(self, req: Dict[str, Any], _: Any) -> Dict[str, Any]:
        with self._lock:
            self.paused = True
            if self.worker is not None:
                self.worker.pause("paused by ocapctl")
            self.server.record(Event.PAUSED)
            return {"paused": True}

    def _cmd_resume(self, req: Dict[str, Any], _: Any) -> Dict[str, Any]:
        with self._lock:
            self.paused = False
            if self.worker is not None:
                self.worker.resume()
            self.server.record(Event.RESUMED)
            return {"paused": False}

    def stop(self) -> None:
        """Kill a running worker and remove its scratch (no partial candidate survives)."""
        with self._lock:
            if self.worker is not None:
                self.worker.kill("daemon stopping")
                shutil.rmtree(self.worker.job_dir, ignore_errors=True)
                self.server.record(Event.PERSONALIZE_FAILED, state="killed", reason="daemon stopping")
                self.worker = None

    # -- status ------------------------------------------------------------------------------------
    def describe(self) -> Dict[str, Any]:
        return status.describe(self)

    def status_line(self) -> str:
        """One line for systemd's STATUS= and the demo."""
        return status.status_line(self)
