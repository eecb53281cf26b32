"""The serving plane put together: one inference path (ModelSlot) feeding the ClassLog and the
SampleCache, teacher sampling while a pruned model serves, a flusher thread, and the control
commands (status, classes, models, history, metrics, predict, forget-samples: ``Server.handlers``).
``serving_parts`` builds what the server runs on; a composition root (ocapd's start, ``build_server``)
registers the commands on ``control``, and the control plane's with them; it adds its collector to
``metrics`` and changes the served model
through ``swap`` (a package path), ``install`` (a model loaded already) and ``revert_to_base``."""

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from ocap_core.errors import OcapError
from ocap_core.package import resolve_model
from ocap_core.runtime import short_names

from .class_log import ClassLog
from .control_socket import ControlServer, RequestError
from .errors import ServiceError
from .event_kinds import Event
from .events import EventLog
from .metrics import FORMATS, Metrics, ServingCollector
from .model_slot import LoadedModel, ModelSlot, Predictions, load_model
from .model_table import ModelTable
from .recent_counts import RecentCounts
from .request_stats import RequestStats
from .sample_cache import SampleCache

log = logging.getLogger(__name__)
DB_NAME = "ocap.db"


@dataclass(frozen=True)
class ServerConfig:
    """What the serving plane can be told (the daemon's INI sections map onto it)."""

    providers: Sequence[str] = ("cpu",)  # short names in order (ocap_core.runtime.resolve_providers)
    threads: int = 1
    trt_cache_dir: Optional[str] = None     # TensorRT's engine cache (ocapd: [daemon] cache_dir/trt)
    trt_fp16: bool = True
    flush_seconds: float = 5.0
    low_confidence: float = 0.5
    recent_seconds: int = 3600          # per-second counts kept in memory for the policy checks (RecentCounts)
    cache_per_class: int = 256
    cache_val_share: float = 0.2
    cache_quota: int = 256 * 2 ** 20
    selector: str = "kl"
    teacher_share: float = 0.1          # of frames the base model also sees while a pruned model serves
    background_queue: int = 256         # frames waiting for the cache / teacher thread; more are skipped
    max_payload: int = 1 << 20
    max_connections: int = 64
    idle_timeout: float = 30.0
    allowed_gids: FrozenSet[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not 0 <= self.teacher_share <= 1:
            raise ServiceError(f"teacher_share must be in [0, 1], got {self.teacher_share}")
        if self.flush_seconds <= 0 or self.threads < 1 or self.background_queue < 1:
            raise ServiceError(f"flush_seconds, threads and background_queue must be positive, got "
                               f"{self.flush_seconds}, {self.threads}, {self.background_queue}")


@dataclass
class ServingParts:
    """What a ``Server`` runs on, built by ``serving_parts`` and handed in by a composition root (ocapd's
    start, ``python -m ocap_service``, ``build_server``): the server builds none of its collaborators."""

    state_dir: Path
    slot: ModelSlot                     # the served model, swapped under requests
    base: LoadedModel                   # the unpruned model the served one was made from (the teacher)
    class_log: ClassLog
    events: EventLog
    models: ModelTable
    cache: SampleCache
    control: ControlServer
    stats: RequestStats
    metrics: Metrics

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_NAME


def load_args(config: ServerConfig, events: EventLog) -> Dict[str, Any]:
    """How a server with ``config`` loads a model, as ``load_model``'s keyword arguments: providers,
    threads, TensorRT's options, and a ``provider_fallback`` event when a model gets fewer providers than
    it asked for (the gate loads candidates with these too)."""
    def fallback(detail: Dict[str, Any]) -> None:
        events.record(Event.PROVIDER_FALLBACK, **detail)

    c = config
    return {"providers": tuple(c.providers), "threads": c.threads, "trt_cache_dir": c.trt_cache_dir,
            "trt_fp16": c.trt_fp16, "on_fallback": fallback}


def serving_parts(model: str, state_dir: Path, socket_path: Path, config: ServerConfig = ServerConfig(),
                  base: Optional[str] = None, cache_dir: Optional[Path] = None,
                  clock: Callable[[], float] = time.time) -> ServingParts:
    """Every part of the serving plane for ``model`` in ``state_dir`` (ocap.db, cache/) with a control
    socket at ``socket_path``. ``base`` is the unpruned model the served one was made from (default:
    ``model`` itself); it is loaded a second time only when it is another package."""
    cfg = config
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    db = state_dir / DB_NAME
    class_log = ClassLog(db, low_confidence=cfg.low_confidence,           # creates / migrates the schema
                         recent_seconds=cfg.recent_seconds, clock=clock)
    events = EventLog(db)
    how = load_args(cfg, events)
    same_dir = base is None or Path(resolve_model(base)).resolve() == Path(resolve_model(model)).resolve()
    teacher = None if same_dir else load_model(str(base), **how)
    served = load_model(model, shared_base=teacher, **how)    # a cascade's fallback: the base's session
    if teacher is None or teacher.version == served.version:
        teacher = served                        # the base serves: no second session, no teacher
    cache = SampleCache(Path(cache_dir or state_dir / "cache"), db, per_class=cfg.cache_per_class,
                        val_share=cfg.cache_val_share, quota_bytes=cfg.cache_quota, selector=cfg.selector)
    control = ControlServer(socket_path, max_payload=cfg.max_payload, max_connections=cfg.max_connections,
                            idle_timeout=cfg.idle_timeout, allowed_gids=cfg.allowed_gids)
    return ServingParts(state_dir=state_dir, slot=ModelSlot(served), base=teacher, class_log=class_log, events=events,
                        models=ModelTable(db), cache=cache, control=control, stats=RequestStats(), metrics=Metrics())


def build_server(model: str, state_dir: Path, socket_path: Path, config: ServerConfig = ServerConfig(),
                 base: Optional[str] = None, cache_dir: Optional[Path] = None,
                 clock: Callable[[], float] = time.time) -> "Server":
    """The serving plane alone, put together (``python -m ocap_service``, the benchmarks and tests): its parts,
    the server on them, and the server's commands on its socket. ocapd's start does the same and adds
    the control plane's."""
    server = Server(serving_parts(model, state_dir, socket_path, config, base, cache_dir, clock), config)
    server.control.register_all(server.handlers())
    return server


class Server:
    """The serving plane on ``parts``: requests through the slot, counts into the class log, frames
    offered to the sample cache; while another model serves, the base model is the teacher: it checks
    a share of frames, its counts are logged with origin ``teacher``, and only the frames it saw are
    offered to the sample cache. Its commands (``handlers``) are registered by whoever built it."""

    def __init__(self, parts: ServingParts, config: ServerConfig = ServerConfig()) -> None:
        self.config = cfg = config
        self.state_dir = parts.state_dir
        self.db_path = parts.db_path
        self.class_log = parts.class_log
        self.events = parts.events
        self.models = parts.models
        self.slot = parts.slot
        self.base = parts.base
        self.cache = parts.cache
        self.control = parts.control
        self.stats = parts.stats
        self.metrics = parts.metrics
        self.metrics.add(ServingCollector(self))
        self.started = time.time()
        # request threads, the background thread and swaps all change these (and add_status its
        # copy of the status parts): one lock for them all
        self._counts_lock = threading.Lock()
        self._teacher_credit = 0.0
        self.background_skipped = 0
        # [checked, inside, disagreed] of the model installed by swap number _teacher_swap: frames the
        # teacher saw, those of a class the served model has, and of those the ones it answered otherwise
        self._teacher_counts = [0, 0, 0]
        self._teacher_swap = 0
        self._status_parts: Dict[str, Callable[[], Any]] = {}
        self._last_trouble: Dict[str, float] = {}
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="flush", daemon=True)
        # cache offers and teacher checks (KL scoring, a file write with fsync, a second model: ~1 ms)
        # leave the request path through a bounded queue; when it is full the frame is skipped
        self._background: queue.Queue = queue.Queue(maxsize=cfg.background_queue)
        self._worker = threading.Thread(target=self._background_loop, name="cache-teacher", daemon=True)
        served = self.slot.current()
        self.models.put(served.card, "serving")
        if self.base is not served:
            self.models.put(self.base.card, "teacher")
        self.events.record(Event.SERVING_STARTED, model=served.version, base=self.base.version,
                           providers=short_names(served.providers))

    def handlers(self) -> Dict[str, Callable[[Any, Any], Any]]:
        """The serving plane's socket commands, by name (``ocap_service.commands`` declares them)."""
        return {"status": self._status, "classes": self._classes, "models": self._models, "history": self._history,
                "metrics": self._metrics, "predict": self._predict, "forget-samples": self._forget}

    def _load(self, path: str) -> LoadedModel:
        return load_model(path, **self.load_args())

    def load_args(self) -> Dict[str, Any]:
        """How this server loads a model (``load_args``, and a cascade's fallback shares the base
        model's session); the gate loads candidates with these too."""
        return dict(load_args(self.config, self.events), shared_base=self.base)

    # -- what the control plane uses -----------------------------------------------------------
    @property
    def served(self) -> LoadedModel:
        """The model answering requests now."""
        return self.slot.current()

    @property
    def recent(self) -> RecentCounts:
        """Per-second class counts of the recent past (served and teacher), for the policy checks."""
        return self.class_log.recent

    def window(self, seconds: float, origin: str = "served",
               since: Optional[float] = None) -> Tuple[Dict[int, int], int]:
        """(class histogram, low-confidence count) of the last ``seconds`` (not before ``since``)."""
        return self.class_log.recent.window(seconds, origin=origin, since=since)

    def series(self, window: float, windows: int, origin: str = "served",
               since: Optional[float] = None) -> List[Dict[int, int]]:
        """Histograms of the last ``windows`` whole windows of ``window`` seconds, oldest first."""
        return self.class_log.recent.series(window, windows, origin=origin, since=since)

    def cache_counts(self) -> Dict[str, Dict[int, int]]:
        """Cached samples per split (``train``, ``val``: held back) and class."""
        return self.cache.counts()

    def cached(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """(images, classes) of the cached samples of ``split``."""
        return self.cache.load(split)

    def forget_samples(self) -> int:
        """Delete every cached sample; returns how many went."""
        return self.cache.forget()

    def request_stats(self) -> Dict[str, Any]:
        """Totals, rates and latency percentiles of the requests served (``RequestStats.snapshot``)."""
        return self.stats.snapshot()

    def event_counts(self, kinds: Sequence[str], split: str = "") -> Dict[Tuple[str, Any], int]:
        """How many events of each kind the table holds, split by a detail (``EventLog.counts``)."""
        return self.events.counts(kinds, split=split)

    def record(self, kind: str, **detail: Any) -> None:
        """Add an event to the events table (``ocapctl history``)."""
        self.events.record(kind, **detail)

    def reconfigure(self, teacher_share: float, recent_seconds: int) -> None:
        """A reload's live changes: the teacher's share of frames, and the span of per-second counts kept
        for the policy checks (a longer one fills over time)."""
        self.config = dataclasses.replace(self.config, teacher_share=teacher_share, recent_seconds=recent_seconds)
        self.class_log.recent.resize(recent_seconds)

    def retain_counts(self, keep_minutes: int) -> int:
        """Delete class-log rows older than ``keep_minutes``; returns how many went."""
        return self.class_log.retain(keep_minutes)

    def recent_events(self, limit: int, kinds: Optional[Sequence[str]] = None,
                      since: Optional[float] = None) -> List[Dict[str, Any]]:
        """The latest events, newest first."""
        return self.events.recent(limit, kinds=kinds, since=since)

    def set_model_status(self, version: str, status: str) -> None:
        """Mark a model version in the models table (``last_good``, ``retired``...)."""
        self.models.set_status(version, status)

    @property
    def teacher(self) -> Optional[LoadedModel]:
        """The base model while another model serves, else None."""
        return None if self.slot.current() is self.base else self.base

    def teacher_counts(self) -> Dict[str, int]:
        """Frames the teacher checked since the last swap, those of a class the served model has, and
        of those the ones the served model answered otherwise: one consistent reading of the three."""
        with self._counts_lock:
            checked, inside, disagreed = self._teacher_counts
        return {"checked": checked, "inside": inside, "disagreed": disagreed}

    @property
    def teacher_checked(self) -> int:
        """Frames the teacher checked since the last swap."""
        return self._teacher_counts[0]

    @property
    def teacher_inside(self) -> int:
        """Of the checked frames, those of a class the served model has."""
        return self._teacher_counts[1]

    @property
    def teacher_disagreed(self) -> int:
        """Of the inside frames, those the served model answered otherwise."""
        return self._teacher_counts[2]

    # -- the inference path ---------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> Predictions:
        """The one inference path for a batch (N×H×W[×C] uint8): predict, count, and hand frames to
        the background thread (cache offers from the base model, or teacher checks)."""
        model, swap = self.slot.serving()       # which swap installed it: teacher checks are per model
        t0 = time.perf_counter()
        try:
            pred = model.predict(images)
        except OcapError:
            self.stats.record_failure()
            raise
        self.stats.record(len(pred.class_ids), (time.perf_counter() - t0) * 1e3)
        self.class_log.add(pred.class_ids, pred.confidence, pred.model_version, fell_back=pred.fell_back)
        if model is self.base:
            if pred.features is not None:
                for i in range(len(images)):
                    self._hand_off(("offer", np.array(images[i]), pred.features[i], int(pred.class_ids[i]),
                                    float(pred.confidence[i])))
        else:
            picked = self._teacher_pick(len(images))
            if picked:
                self._hand_off(("teacher", np.array(images[picked]), pred.class_ids[picked], model.class_ids, swap))
        return pred

    def _teacher_pick(self, n: int) -> list:
        """Indices of the frames of this batch the teacher should see (every 1/share-th frame); the
        credit is shared by every request thread, so it changes under the lock."""
        picked = []
        share = self.config.teacher_share
        with self._counts_lock:
            credit = self._teacher_credit
            for i in range(n):
                credit += share
                if credit >= 1.0:
                    credit -= 1.0
                    picked.append(i)
            self._teacher_credit = credit
        return picked

    def _hand_off(self, item: tuple) -> None:
        try:
            self._background.put_nowait(item)
        except queue.Full:
            with self._counts_lock:
                self.background_skipped += 1

    def _background_loop(self) -> None:
        while True:
            item = self._background.get()
            try:
                if item is None:
                    return
                if item[0] == "offer":
                    self.cache.offer(*item[1:])
                else:
                    self._teacher_check(*item[1:])
            except Exception as e:  # a full disk or a bad frame: serving goes on, the event says so
                log.exception("background %s failed", item[0])
                self._trouble(Event.CACHE_WRITE_FAILED if item[0] == "offer" else "teacher_check_failed", e)
            finally:
                self._background.task_done()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the background thread has handled every frame handed to it (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while self._background.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._background.unfinished_tasks

    def _teacher_check(self, images: np.ndarray, served_ids: np.ndarray, kept: Sequence[int], swap: int) -> None:
        """The base model on frames a pruned model answered: counts with origin ``teacher``, and the
        disagreement on frames whose teacher class the served model has (others are drift's business).
        The disagreement counters belong to the model of swap number ``swap``: frames an earlier model
        answered (still queued at a swap) are the teacher's counts but not the new model's checks."""
        teacher = self.base
        t = teacher.predict(images)
        self.class_log.add(t.class_ids, t.confidence, teacher.version, origin="teacher")
        inside = np.isin(t.class_ids, kept)
        n_inside, n_disagreed = int(inside.sum()), int(np.sum(t.class_ids[inside] != served_ids[inside]))
        with self._counts_lock:
            if swap > self._teacher_swap:       # the new model's first check came before _after_swap
                self._teacher_swap, self._teacher_counts = swap, [0, 0, 0]
            if swap == self._teacher_swap:
                c = self._teacher_counts
                c[0] += len(images)
                c[1] += n_inside
                c[2] += n_disagreed
        if t.features is not None:
            for img, f, k, c in zip(images, t.features, t.class_ids, t.confidence):
                self.cache.offer(img, f, int(k), float(c))

    def _trouble(self, kind: str, error: BaseException) -> None:
        """Record a failure event, at most once a minute per kind (a full disk fails every frame)."""
        now = time.monotonic()
        if now - self._last_trouble.get(kind, -1e9) >= 60:
            self._last_trouble[kind] = now
            self.events.record(kind, error=f"{type(error).__name__}: {error}")

    def add_status(self, key: str, part: Callable[[], Any]) -> None:
        """Have ``status`` include ``part()`` under ``key`` (the control plane adds its state). The
        dict is copied whole, so a part added while ``status`` runs is never seen half-way."""
        with self._counts_lock:
            parts = dict(self._status_parts)
            parts[key] = part
            self._status_parts = parts

    # -- model changes --------------------------------------------------------------------------
    def swap(self, path: str, why: str = "") -> Tuple[bool, str]:
        """Serve the package at ``path`` (verified, loaded and warmed up first); the reason on refusal."""
        old = self.slot.current()
        t0 = time.perf_counter()
        ok, reason = self.slot.swap(path, **self.load_args())
        return self._swapped(old, ok, reason, path, time.perf_counter() - t0, why)

    def install(self, model: LoadedModel, why: str = "") -> Tuple[bool, str]:
        """Serve a model that is loaded already (the gate's session of a candidate): no second load."""
        old = self.slot.current()
        t0 = time.perf_counter()
        ok, reason = self.slot.install(model)
        return self._swapped(old, ok, reason, model.path, time.perf_counter() - t0, why)

    def _swapped(self, old: LoadedModel, ok: bool, reason: str, path: Any, seconds: float,
                 why: str) -> Tuple[bool, str]:
        if not ok:
            self.events.record(Event.SWAP_REFUSED, path=str(path), reason=reason, serving=old.version)
            return ok, reason
        new = self.slot.current()
        if new.version == self.base.version:
            self.base = new                     # the fresh session is the base from now on
        self._after_swap(old, new, seconds, why=why)
        return ok, reason

    def revert_to_base(self, why: str) -> Tuple[bool, str]:
        """Serve the base model again at once (it is loaded already: it was the teacher)."""
        if self.slot.current() is self.base:
            return True, f"already serving the base model {self.base.version}"
        return self.install(self.base, why=why)

    def _after_swap(self, old: LoadedModel, new: LoadedModel, seconds: float, why: str = "") -> None:
        _, swap = self.slot.serving()
        with self._counts_lock:                 # unless a check of the new model has reset them already
            if swap > self._teacher_swap:
                self._teacher_swap, self._teacher_counts = swap, [0, 0, 0]
        self.models.put(new.card, "serving")
        self.models.set_status(old.version, "teacher" if old is self.base and new is not self.base else "retired")
        self.events.record(Event.SWAP, to=new.version, was=old.version, seconds=round(seconds, 4), why=why,
                           providers=short_names(new.providers))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.control.start()
        self._flusher.start()
        self._worker.start()

    def stop(self) -> None:
        """Stop answering, let the background thread finish what it holds, flush, close (also when
        ``start`` was never called)."""
        self._stop.set()
        self.control.stop()
        if self._flusher.is_alive():
            self._flusher.join()
        if self._worker.is_alive():
            self._background.put(None)
            self._worker.join()
        self.class_log.close()
        self.cache.close()
        self.events.record(Event.SERVING_STOPPED, frames=self.stats.frames)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.config.flush_seconds):
            try:
                self.class_log.flush()
            except Exception as e:  # the counts stay in memory for the next try
                log.exception("class log flush failed")
                self._trouble(Event.FLUSH_FAILED, e)

    # -- control commands -----------------------------------------------------------------------
    def _status(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        s = self.stats.snapshot()
        teacher = self.teacher
        tc = self.teacher_counts()
        return {"model": self.slot.describe(), "base": self.base.version, "uptime_s": time.time() - self.started,
                "fallback": self._fallback_status(),
                "requests": s["frames"], "failed": s["failed"], "rate_per_s": s["rate_per_s"],
                "latency_ms": s["latency_ms"],
                "teacher": None if teacher is None else {
                    "version": teacher.version, "share": self.config.teacher_share,
                    "providers": short_names(teacher.providers), **tc},
                "cache": {sp: {str(k): n for k, n in c.items()} for sp, c in self.cache.counts().items()},
                "cache_bytes": self.cache.bytes, "cache_quota": self.cache.quota, "cache_per_class": self.cache.per_class,
                "background_skipped": self.background_skipped, "last_flush": self.class_log.last_flush,
                **{k: part() for k, part in self._status_parts.items()}}

    def _fallback_status(self, minutes: int = 5) -> Optional[Dict[str, Any]]:
        """While a cascade serves: how many of its answers of the last ``minutes`` (flushed) its base
        gave, overall and per class."""
        served = self.slot.current()
        if served.base is None:
            return None
        rows = self.class_log.fallback(minutes, model_version=served.version)
        n, back = sum(a for a, _ in rows.values()), sum(b for _, b in rows.values())
        return {"minutes": minutes, "tau": served.tau, "frames": n, "fell_back": back,
                "share": back / n if n else None,
                "per_class": {str(k): {"frames": a, "fell_back": b} for k, (a, b) in rows.items()}}

    def _classes(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        minutes = req.get("minutes", 60)
        origin = req.get("origin", "served")
        if not isinstance(minutes, int) or minutes < 1:
            raise RequestError("bad_request", f"minutes must be a positive integer, got {minutes!r}")
        if origin not in ("served", "teacher"):
            raise RequestError("bad_request", f"origin must be 'served' or 'teacher', got {origin!r}")
        names = self.base.card.class_names
        hist = self.class_log.histogram(minutes, origin=origin)
        return {"minutes": minutes, "origin": origin,
                "classes": [{"class_id": k, "class_name": names[k], "n": n} for k, n in hist.items()]}

    def _models(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        totals = self.class_log.totals_by_version()
        return {"serving": self.slot.describe(), "base": self.base.version,
                "models": [dict(m, served=totals.get(m["version"])) for m in self.models.all()]}

    def _history(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        limit = req.get("limit", 50)
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise RequestError("bad_request", f"limit must be an integer in 1..10000, got {limit!r}")
        return {"events": self.events.recent(limit)}

    def _metrics(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        fmt = req.get("format", "openmetrics")
        if fmt not in FORMATS:
            raise RequestError("bad_request", f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return {"format": fmt, "content_type": FORMATS[fmt][1], "text": self.metrics.render(fmt)}

    def _predict(self, req: Dict[str, Any], payload: Optional[bytes]) -> Dict[str, Any]:
        shape, dtype, data = req.get("shape"), req.get("dtype", "uint8"), payload or b""
        if dtype != "uint8":
            raise RequestError("bad_request", f"dtype must be uint8, got {dtype!r}")
        if (not isinstance(shape, list) or not 2 <= len(shape) <= 3
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise RequestError("bad_request", f"shape must be [H, W] or [H, W, C] of positive integers, got {shape!r}")
        if int(np.prod(shape)) != len(data):
            raise RequestError("bad_request", f"shape {shape} needs {int(np.prod(shape))} bytes, got {len(data)}")
        try:
            pred = self.infer(np.frombuffer(data, np.uint8).reshape([1] + shape))
        except OcapError as e:
            raise RequestError("bad_request", str(e)) from e
        k = int(pred.class_ids[0])
        return {"class_id": k, "class_name": self.base.card.class_names[k],
                "confidence": float(pred.confidence[0]), "model_version": pred.model_version}

    def _forget(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        n = self.cache.forget()
        self.events.record(Event.SAMPLES_FORGOTTEN, samples=n)
        return {"forgotten": n}
