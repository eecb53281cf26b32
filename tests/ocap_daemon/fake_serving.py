"""A stand-in for the serving plane's narrow face (``ocap_daemon/serving_plane.py``): the policy's unit tests
set what it reports (windows, cache fill, events, latency) and read what the policy asked of it (events
recorded, models installed), with no onnxruntime, SQLite or socket. The same policy runs on the real
``Server`` in test_controller.py and ocapd's end-to-end tests."""

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

NAMES = [f"class {k}" for k in range(10)]


@dataclass
class Model:
    version: str
    class_ids: List[int]
    card: Any = field(default_factory=lambda: SimpleNamespace(name="base", class_names=NAMES))


class FakeServing:
    def __init__(self, clock) -> None:
        self.clock = clock
        self.base = Model("base-v1", list(range(10)))
        self._served = self.base
        self.windows: List[Dict[int, int]] = []       # what series() reports, oldest first
        self.cache: Dict[str, Dict[int, int]] = {"train": {}, "val": {}}
        self.p99_ms: Optional[float] = 1.0
        self.events: List[Tuple[float, str, Dict[str, Any]]] = []

    # -- reads ----------------------------------------------------------------------------------
    @property
    def served(self) -> Model:
        return self._served

    @property
    def teacher(self) -> Optional[Model]:
        return None if self._served is self.base else self.base

    def series(self, window: float, windows: int, origin: str = "served",
               since: Optional[float] = None) -> List[Dict[int, int]]:
        return [dict(w) for w in self.windows[-windows:]]

    def window(self, seconds: float, origin: str = "served", since: Optional[float] = None):
        hist: Dict[int, int] = {}
        for w in self.windows[-1:]:
            for k, n in w.items():
                hist[k] = hist.get(k, 0) + n
        return hist, 0

    def cache_counts(self) -> Dict[str, Dict[int, int]]:
        return {split: dict(c) for split, c in self.cache.items()}

    def cached(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        ys = [k for k, n in sorted(self.cache[split].items()) for _ in range(n)]
        return np.zeros((len(ys), 28, 28), np.uint8), np.asarray(ys, np.int64)

    def request_stats(self) -> Dict[str, Any]:
        return {"latency_ms": {"p99": self.p99_ms}}

    def recent_events(self, limit: int, kinds: Optional[Sequence[str]] = None,
                      since: Optional[float] = None) -> List[Dict[str, Any]]:
        rows = [{"ts": t, "kind": k, "detail": d} for t, k, d in reversed(self.events)
                if (not kinds or k in kinds) and (since is None or t >= since)]
        return rows[:limit]

    # -- what the policy asks -------------------------------------------------------------------
    def record(self, kind: str, **detail: Any) -> None:
        self.events.append((self.clock(), str(kind), detail))
