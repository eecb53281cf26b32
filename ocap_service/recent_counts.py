"""Per-second class counts of the recent past, in memory: the stability, drift and probation checks
look at windows of seconds to hours (seconds in the demo), finer than the per-minute SQLite rows.
Bounded to ``keep_seconds``, which must cover the longest span a check reads (ocapd sizes it from its
config: ``ocap_daemon.main.recent_seconds``); lost on restart, which only makes stability start over.

Memory: one entry per second with traffic, two small dicts each; measured with tracemalloc at 10
classes, about 1.2-1.5 kB per second for the served counts alone and 2-2.7 kB with teacher checks too,
so a 3-hour span costs about 13-16 MB (21-28 MB with teacher checks)."""

import collections
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

MAX_LATE = 10       # seconds a batch may come after a newer one and still be counted at its second


class RecentCounts:
    def __init__(self, keep_seconds: int = 3600, clock: Callable[[], float] = time.time) -> None:
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # [second, {(origin, class_id): n}, {origin: low-confidence n}]
        self._seconds: Deque[Tuple[int, Dict[Tuple[str, int], int], Dict[str, int]]] = collections.deque()

    def resize(self, keep_seconds: int) -> None:
        """Keep ``keep_seconds`` from now on (a config reload). Growing cannot bring back seconds already
        dropped: a longer span fills as time passes. Shrinking drops the oldest seconds at once."""
        with self._lock:
            self.keep_seconds = keep_seconds
            seconds = self._seconds
            while seconds and seconds[0][0] <= seconds[-1][0] - keep_seconds:
                seconds.popleft()

    def add(self, second: int, origin: str, class_ids: List[int], low: int) -> None:
        """Count ``class_ids`` (``low`` of them low-confidence) at ``second``. Callers read the clock
        before they get here, so with several adders a batch of second s may come after one of s + 1:
        it is counted at its own second (dropping it lost counts at every second boundary)."""
        with self._lock:
            seconds = self._seconds
            if not seconds or seconds[-1][0] < second:
                seconds.append((second, {}, {}))
                while seconds[0][0] <= second - self.keep_seconds:
                    seconds.popleft()
                entry = seconds[-1]
            elif seconds[-1][0] == second:
                entry = seconds[-1]
            else:
                entry = self._late_entry(second)
                if entry is None:
                    return
            _, counts, lows = entry
            for k in class_ids:
                counts[(origin, k)] = counts.get((origin, k), 0) + 1
            if low:
                lows[origin] = lows.get(origin, 0) + low

    def _late_entry(self, second: int) -> Optional[Tuple[int, Dict[Tuple[str, int], int], Dict[str, int]]]:
        """The entry of ``second``, older than the newest, inserted in order if missing (lock held).
        None more than ``MAX_LATE`` seconds back: that is a clock stepped back, not a slow thread,
        and such a batch is not worth a walk down the whole deque on the request path."""
        seconds = self._seconds
        if second < seconds[-1][0] - MAX_LATE or second <= seconds[-1][0] - self.keep_seconds:
            return None
        i = len(seconds) - 1
        while i >= 0 and seconds[i][0] > second:
            i -= 1
        if i >= 0 and seconds[i][0] == second:
            return seconds[i]
        entry: Tuple[int, Dict[Tuple[str, int], int], Dict[str, int]] = (second, {}, {})
        seconds.insert(i + 1, entry)
        return entry

    def window(self, seconds: float, origin: str = "served", end: Optional[float] = None,
               since: Optional[float] = None) -> Tuple[Dict[int, int], int]:
        """(class histogram, low-confidence count) over the ``seconds`` before ``end`` (default now),
        not earlier than ``since``."""
        end_s = int(self._clock() if end is None else end)
        start_s = end_s - seconds
        if since is not None:
            start_s = max(start_s, since)
        hist: Dict[int, int] = {}
        low = 0
        with self._lock:
            for s, counts, lows in self._seconds:
                if start_s <= s < end_s:
                    for (o, k), n in counts.items():
                        if o == origin:
                            hist[k] = hist.get(k, 0) + n
                    low += lows.get(origin, 0)
        return dict(sorted(hist.items())), low

    def series(self, window_seconds: float, windows: int, origin: str = "served",
               since: Optional[float] = None) -> List[Dict[int, int]]:
        """Histograms of the last ``windows`` whole windows, oldest first, ending at the current second;
        windows that would start before ``since`` are left out (so the list may be shorter)."""
        end = int(self._clock())
        out = []
        for i in range(windows, 0, -1):
            w_end = end - (i - 1) * window_seconds
            if since is not None and w_end - window_seconds < since:
                continue
            out.append(self.window(window_seconds, origin, end=w_end)[0])
        return out
