"""What serves, and the ways back: the model store's pointers, installing a gated candidate in the
serving slot, probation against the model it replaced, rollback to ``last_good`` and revert to the base.

The controller decides *when* (its policy); the deployer does it and owns the state that says what
happened: the probation record and the store's ``current`` / ``last_good`` pointers. A candidate is
hashed once by the gate's load and once by the store's copy, and loaded once: the session the gate
judged is the one that serves."""

import dataclasses
import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ocap_core.runtime import short_names
from ocap_service import faults
from ocap_service.event_kinds import Event
from ocap_service.model_slot import LoadedModel
from ocap_service.server import Server

from . import engine_cache, watch
from .errors import DaemonError
from .store import ModelStore

log = logging.getLogger(__name__)


class Phase(str, enum.Enum):
    """Where the daemon is in its loop (a ``str``, so status JSON shows the name)."""

    OBSERVING = "observing"
    PERSONALIZING = "personalizing"
    GATING = "gating"
    PROBATION = "probation"
    PERSONALIZED = "personalized"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Probation:
    """A deployed model on trial: since when, the model it replaced, and that model's record over the
    same span just before the deploy (both from the in-memory per-second counts)."""

    version: str
    previous: str
    since: float
    before: watch.Rates

    def seconds_left(self, duration: float, now: float) -> float:
        """Seconds of a probation of ``duration`` left at ``now``."""
        return max(0.0, duration - (now - self.since))


class Deployer:
    """Installs, watches and undoes deployments on ``server``, keeping ``store``'s pointers in step."""

    def __init__(self, server: Server, store: ModelStore, clock: Callable[[], float]) -> None:
        self.server, self.store, self._clock = server, store, clock
        self.probation: Optional[Probation] = None

    def deploy(self, model: LoadedModel, why: str, span: float, drift_baseline: float = 0.0) -> Tuple[bool, str]:
        """Store the gated ``model`` (loaded from its candidate directory), serve that very session, point
        ``current`` at it and start probation against the model it replaces, whose record over the last
        ``span`` seconds is the yardstick. On a refused swap the old model keeps serving: (False, why)."""
        previous = self.server.served
        hist, low = self.server.window(span, origin="served")   # the old model's record
        n = sum(hist.values())
        before = watch.Rates(n=n, low_confidence_share=low / n if n else 0.0)
        faults.point("deploy.before_store")
        stored = self.store.add(model.path)
        faults.point("deploy.stored")
        ok, reason = self.server.install(dataclasses.replace(model, path=stored), why=why)
        if not ok:
            return ok, reason
        faults.point("deploy.swapped")
        try:
            self.store.set_current(model.version, rehash=False)     # add has just checked every byte it copied
        except (OSError, DaemonError):
            # serving a model the store cannot point at would not survive a restart: go back
            self.server.revert_to_base("the current pointer could not be written")
            raise
        faults.point("deploy.current_set")
        self.store.prune()
        self.probation = Probation(model.version, previous.version, self._clock(), before)
        self.server.record(Event.DEPLOY, version=model.version, was=previous.version, why=why,
                           drift_baseline=round(drift_baseline, 4), providers=short_names(model.providers))
        return ok, reason

    def sweep_engines(self) -> List[str]:
        """Remove the TensorRT engines of versions that cannot serve again (neither stored, nor the base,
        nor serving): candidates the gate rejected, versions the store pruned. Returns their versions."""
        root = self.server.load_args().get("trt_cache_dir")
        if not root:
            return []
        keep = set(self.store.versions()) | {self.server.base.version, self.server.served.version}
        return engine_cache.sweep(Path(root), keep)

    def check_probation(self, cfg: watch.ProbationConfig, min_frames: int) -> Tuple[str, str]:
        """Judge the model on probation once it served ``min_frames`` (and as many teacher checks of its
        classes): ("pending" | "passed" | "failed", why). A pass before ``cfg.duration`` is over stays
        pending; at its end ``last_good`` points at the model; a failure rolls back (``rollback``).
        Without a model on probation: ("none", "")."""
        pb = self.probation
        if pb is None:
            return "none", ""
        now = self._clock()
        hist, lows = self.server.window(now - pb.since + 1, origin="served", since=pb.since)
        frames = sum(hist.values())
        tc = self.server.teacher_counts()           # one consistent reading of the three counters
        enough = tc["inside"] >= min_frames  # judge disagreement on enough checks only
        during = watch.Rates(n=frames if enough else 0, low_confidence_share=lows / frames if frames else 0.0,
                             disagreement=tc["disagreed"] / tc["inside"] if enough else None)
        verdict, why = watch.probation_verdict(pb.before, during, cfg, min_frames=min_frames)
        if verdict == "failed":
            self.server.record(Event.PROBATION_FAILED, version=pb.version, reason=why)
            self.rollback(f"probation failed: {why}")
            return verdict, why
        if verdict == "passed" and now - pb.since >= cfg.duration:
            faults.point("probation.passing")
            self.store.set_last_good(pb.version)
            faults.point("probation.last_good_set")
            self.server.set_model_status(pb.version, "last_good")
            self.server.record(Event.PROBATION_PASSED, version=pb.version, summary=why)
            self.probation = None
            return verdict, why
        return "pending", why

    def revert(self, why: str, kind: str = Event.REVERT) -> str:
        """Serve the base model at once and clear ``current``; returns the version that served."""
        was = self.server.served.version
        faults.point("revert.begin")
        self.server.revert_to_base(why)
        faults.point("revert.swapped")
        self.store.clear_current()
        self.probation = None
        self.server.record(kind, was=was, to=self.server.base.version, reason=why)
        return was

    def rollback(self, why: str) -> str:
        """Back to ``last_good`` when that is not what serves (and it loads), else to the base model;
        returns the version now serving."""
        current = self.server.served.version
        good = self.store.last_good()
        if good and good != current:
            ok, _ = self.server.swap(str(self.store.get(good)), why=why)
            if ok:
                self.store.set_current(good)
                self.probation = None
                self.server.record(Event.ROLLBACK, was=current, to=good, reason=why)
                return good
        self.revert(why, kind=Event.ROLLBACK)
        return self.server.base.version
