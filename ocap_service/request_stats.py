"""Request counters for ``status`` and ``metrics``: totals, recent rates and latency percentiles of the
inference path, kept in memory (a ring of recent latencies, per-second counts for the last minute, and
cumulative latency bucket counts since start for the metrics' histogram), thread-safe."""

import bisect
import collections
import threading
import time
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Tuple

import numpy as np

RATE_WINDOWS = (10, 60)     # seconds
# upper bounds (seconds) of the latency histogram's buckets: a batch of the shipped models takes about a
# millisecond on a desktop core, more on a Jetson's, up to the resource guard's 10 s cap on p99
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram(NamedTuple):
    """Batch latencies since start: cumulative counts per upper bound (``+Inf`` last, equal to ``count``)
    and the sum of the latencies, in seconds."""

    buckets: Tuple[Tuple[float, int], ...]
    sum_s: float
    count: int


class RequestStats:
    def __init__(self, keep_latencies: int = 2000, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._latency_ms: Deque[float] = collections.deque(maxlen=keep_latencies)
        self._per_second: Deque[list] = collections.deque()         # [second, frames]
        self._since = int(clock())
        self.frames = 0
        self.batches = 0
        self.failed = 0
        self._bucket_n: List[int] = [0] * (len(LATENCY_BUCKETS_S) + 1)      # per bucket, not cumulative; +Inf last
        self._latency_sum_s = 0.0

    def record(self, frames: int, latency_ms: float) -> None:
        """Count one batch of ``frames`` that took ``latency_ms``."""
        with self._lock:
            now = int(self._clock())        # read under the lock, so the per-second entries stay in order
            self.frames += frames
            self.batches += 1
            self._latency_ms.append(latency_ms)
            self._bucket_n[bisect.bisect_left(LATENCY_BUCKETS_S, latency_ms / 1e3)] += 1    # le: bound included
            self._latency_sum_s += latency_ms / 1e3
            if self._per_second and self._per_second[-1][0] == now:
                self._per_second[-1][1] += frames
            else:
                self._per_second.append([now, frames])
                while self._per_second[0][0] <= now - RATE_WINDOWS[-1]:
                    self._per_second.popleft()

    def record_failure(self) -> None:
        """Count one batch that failed."""
        with self._lock:
            self.failed += 1

    def snapshot(self) -> Dict[str, Any]:
        """Totals, frames per second over the last 10 s and 60 s, batch latency p50/p90/p99 (ms)."""
        now = int(self._clock())
        with self._lock:
            lat = np.asarray(self._latency_ms, np.float64)
            recent = list(self._per_second)
            out: Dict[str, Any] = {"frames": self.frames, "batches": self.batches, "failed": self.failed}
        # the current second is still filling: rates count the whole seconds before it (since start)
        out["rate_per_s"] = {f"{w}s": sum(n for s, n in recent if now - w <= s < now) / max(1, min(w, now - self._since))
                             for w in RATE_WINDOWS}
        out["latency_ms"] = ({f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)} if len(lat)
                             else {"p50": None, "p90": None, "p99": None})
        return out

    def histogram(self) -> LatencyHistogram:
        """Every batch's latency since start, as a histogram (one consistent reading)."""
        with self._lock:
            per_bucket, total_s, n = list(self._bucket_n), self._latency_sum_s, self.batches
        cumulative = np.cumsum(per_bucket).tolist()
        bounds = LATENCY_BUCKETS_S + (float("inf"),)
        return LatencyHistogram(tuple(zip(bounds, cumulative)), total_s, n)
