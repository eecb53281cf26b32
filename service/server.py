"""The serving plane put together: one inference path (ModelSlot) feeding the ClassLog and the
SampleCache, a flusher thread, and the read-only control commands (status, classes, models,
history, predict). The control plane registers its own commands on ``control``."""

import collections
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ocap_core.errors import OcapError

from .class_log import ClassLog
from .control_socket import ControlServer, RequestError
from .db import read_rows
from .model_slot import ModelSlot, Predictions, load_model
from .sample_cache import SampleCache

log = logging.getLogger(__name__)


class Server:
    """Serve ``model`` from ``state_dir`` (ocap.db, cache/) with a control socket at ``socket_path``."""

    def __init__(self, model: str, state_dir: Path, socket_path: Path, providers: Sequence[str] = ("cpu",),
                 threads: int = 1, flush_seconds: float = 5.0, low_confidence: float = 0.5,
                 cache_per_class: int = 256, cache_quota: int = 256 * 2 ** 20) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = db = self.state_dir / "ocap.db"
        self.slot = ModelSlot(load_model(model, providers=providers, threads=threads))
        self.base_version = self.slot.current().version
        self.class_log = ClassLog(db, low_confidence=low_confidence)
        self.cache = SampleCache(self.state_dir / "cache", db, per_class=cache_per_class, quota_bytes=cache_quota)
        self.control = ControlServer(socket_path)
        self.flush_seconds = flush_seconds
        self.started = time.time()
        self.requests = 0
        self._latency_ms: collections.deque = collections.deque(maxlen=2000)
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="flush", daemon=True)
        # cache offers (KL scoring, a file write with fsync: ~1 ms) leave the request path through a
        # bounded queue; when it is full the frame is simply not offered
        self._offers: queue.Queue = queue.Queue(maxsize=256)
        self.offers_dropped = 0
        self._cacher = threading.Thread(target=self._cache_loop, name="cache", daemon=True)
        for name, fn, payload in (("status", self._status, False), ("classes", self._classes, False),
                                  ("models", self._models, False), ("history", self._history, False),
                                  ("predict", self._predict, True)):
            self.control.register(name, fn, payload=payload)

    def infer(self, images: np.ndarray) -> Predictions:
        """The one inference path for a batch (N×H×W[×C] uint8): predict, count, and offer the base
        model's frames to the cache."""
        model = self.slot.current()
        t0 = time.perf_counter()
        pred = model.predict(images)
        self._latency_ms.append((time.perf_counter() - t0) * 1e3)
        self.requests += len(pred.class_ids)
        self.class_log.add(pred.class_ids, pred.confidence, pred.model_version)
        if pred.features is not None and model.version == self.base_version:
            for img, f, k, c in zip(images, pred.features, pred.class_ids, pred.confidence):
                try:
                    self._offers.put_nowait((np.array(img), f, int(k), float(c)))
                except queue.Full:
                    self.offers_dropped += 1
        return pred

    def start(self) -> None:
        self.control.start()
        self._flusher.start()
        self._cacher.start()

    def stop(self) -> None:
        self._stop.set()
        self._flusher.join()
        self._offers.put(None)
        self._cacher.join()
        self.control.stop()
        self.class_log.close()
        self.cache.close()

    def _cache_loop(self) -> None:
        while True:
            item = self._offers.get()
            if item is None:
                return
            try:
                self.cache.offer(*item)
            except Exception:
                log.exception("sample cache offer failed")

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.class_log.flush()
            except Exception:
                log.exception("class log flush failed")

    # -- read-only control commands -------------------------------------------------------------
    def _status(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(1)
        return {"model": self.slot.describe(), "uptime_s": time.time() - self.started, "requests": self.requests,
                "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                               "p99": float(np.percentile(lat, 99))},
                "cache": {s: {str(k): n for k, n in c.items()} for s, c in self.cache.counts().items()},
                "cache_bytes": self.cache.bytes, "cache_offers_dropped": self.offers_dropped,
                "last_flush": self.class_log.last_flush}

    def _classes(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        minutes = req.get("minutes", 60)
        origin = req.get("origin", "served")
        if not isinstance(minutes, int) or minutes < 1:
            raise RequestError("bad_request", f"minutes must be a positive integer, got {minutes!r}")
        if origin not in ("served", "teacher"):
            raise RequestError("bad_request", f"origin must be 'served' or 'teacher', got {origin!r}")
        names = self.slot.current().card.class_names
        hist = self.class_log.histogram(minutes, origin=origin)
        return {"minutes": minutes, "origin": origin,
                "classes": [{"class_id": k, "class_name": names[k], "n": n} for k, n in hist.items()]}

    def _models(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        return {"serving": self.slot.describe(), "base": self.base_version,
                "totals": self.class_log.totals_by_version()}

    def _history(self, req: Dict[str, Any], _: Optional[bytes]) -> Dict[str, Any]:
        limit = req.get("limit", 50)
        rows = read_rows(self.db_path, "SELECT ts, kind, detail_json FROM events ORDER BY ts DESC LIMIT ?",
                         [int(limit)])
        return {"events": [{"ts": ts, "kind": kind, "detail": detail} for ts, kind, detail in rows]}

    def _predict(self, req: Dict[str, Any], payload: Optional[bytes]) -> Dict[str, Any]:
        shape = req.get("shape")
        if req.get("dtype", "uint8") != "uint8" or not isinstance(shape, list) or not 2 <= len(shape) <= 3:
            raise RequestError("bad_request", "predict needs \"shape\": [H, W] or [H, W, C] and dtype uint8")
        if int(np.prod(shape)) != len(payload or b""):
            raise RequestError("bad_request", f"shape {shape} needs {int(np.prod(shape))} bytes, got {len(payload or b'')}")
        try:
            pred = self.infer(np.frombuffer(payload or b"", np.uint8).reshape([1] + shape))
        except OcapError as e:
            raise RequestError("bad_request", str(e)) from e
        k = int(pred.class_ids[0])
        return {"class_id": k, "class_name": self.slot.current().card.class_names[k],
                "confidence": float(pred.confidence[0]), "model_version": pred.model_version}
