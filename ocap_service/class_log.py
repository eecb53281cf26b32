"""How often each class is predicted, per minute, model version and origin (``served`` answers or the
``teacher`` base model's checks), counted in memory and flushed to SQLite in one transaction.

No image and no per-frame row is stored: one row per (minute, version, origin, class) with the count,
the confidence sum and the count of low-confidence predictions. Queries read the flushed rows through
their own connection, so they never wait on the writer.
"""

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import faults
from .db import open_db, read_rows, transaction
from .errors import ServiceError
from .recent_counts import RecentCounts

log = logging.getLogger(__name__)
ORIGINS = ("served", "teacher")
Key = Tuple[int, str, str, int]

# an increment in two statements SQLite 3.22 runs (UPSERT needs 3.24; ocap_service/db.py): the key's row
# with zeros unless it is there, then the counts added to it
_KEY = "minute = ? AND model_version = ? AND origin = ? AND class_id = ?"
_INSERT_ZERO = ("INSERT OR IGNORE INTO counts (minute, model_version, origin, class_id, n, conf_sum, lowconf_n, "
                "fallback_n) VALUES (?, ?, ?, ?, 0, 0.0, 0, 0)")
_ADD = f"UPDATE counts SET n = n + ?, conf_sum = conf_sum + ?, lowconf_n = lowconf_n + ?, fallback_n = fallback_n + ? WHERE {_KEY}"
FIELDS = 4          # per pending key: count, confidence sum, low-confidence count, answers by a cascade's base


class ClassLog:
    """Per-minute class counts; ``add`` is cheap and thread-safe, ``flush`` writes what accumulated."""

    def __init__(self, path: Path, low_confidence: float = 0.5, clock: Callable[[], float] = time.time,
                 recent_seconds: int = 3600) -> None:
        if not 0 <= low_confidence <= 1:
            raise ServiceError(f"low_confidence must be in [0, 1], got {low_confidence}")
        self.path = Path(path)
        self.low_confidence = low_confidence
        self._clock = clock
        self._db = open_db(self.path)
        self._pending: Dict[Key, List[float]] = {}
        # predictions and low-confidence ones per origin since start (the metrics' counters); under _lock
        self._totals: Dict[str, Dict[int, int]] = {o: {} for o in ORIGINS}
        self._low_totals: Dict[str, int] = dict.fromkeys(ORIGINS, 0)
        self._fallback_totals: Dict[int, int] = {}       # served answers a cascade's base gave, per class
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.last_flush: Optional[float] = None
        self.recent = RecentCounts(recent_seconds, clock)     # per second, in memory, for the policy checks

    def add(self, class_ids: Sequence[int], confidences: Sequence[float], model_version: str,
            origin: str = "served", ts: Optional[float] = None, fell_back: Optional[Sequence[bool]] = None) -> None:
        """Count predictions made at ``ts`` (default now); ``fell_back``: per prediction, whether a
        cascade's base gave it."""
        if origin not in ORIGINS:
            raise ServiceError(f"origin must be one of {ORIGINS}, got {origin!r}")
        now = self._clock() if ts is None else ts
        minute = int(now // 60)
        # plain Python numbers: numpy scalars make this loop, run for every frame, twice as slow
        ids = [int(k) for k in (class_ids.tolist() if hasattr(class_ids, "tolist") else class_ids)]
        confs = confidences.tolist() if hasattr(confidences, "tolist") else confidences
        low, n_low = self.low_confidence, 0
        backs = [False] * len(ids) if fell_back is None else \
            [bool(b) for b in (fell_back.tolist() if hasattr(fell_back, "tolist") else fell_back)]
        with self._lock:
            pending = self._pending      # read under the lock: flush swaps in a new dict
            totals = self._totals[origin]
            for k, c, back in zip(ids, confs, backs):
                row = pending.setdefault((minute, model_version, origin, k), [0, 0.0, 0, 0])
                is_low = c < low
                row[0] += 1
                row[1] += c
                row[2] += is_low
                n_low += is_low
                totals[k] = totals.get(k, 0) + 1
                if back:
                    row[3] += 1
                    self._fallback_totals[k] = self._fallback_totals.get(k, 0) + 1
            self._low_totals[origin] += n_low
        self.recent.add(int(now), origin, ids, n_low)

    def totals(self) -> Dict[str, Dict[str, Any]]:
        """Per origin, the predictions per class and the low-confidence ones counted since this log was
        made (in memory: they start at zero with the process, as a Prometheus counter may)."""
        with self._lock:
            out = {o: {"classes": dict(sorted(self._totals[o].items())), "low_confidence": self._low_totals[o]}
                   for o in ORIGINS}
            if self._fallback_totals:
                out["served"]["fallback"] = dict(sorted(self._fallback_totals.items()))
            return out

    def flush(self) -> int:
        """Write the counts gathered since the last flush in one transaction; returns rows written.
        On failure the counts are put back, so nothing is lost until the next try."""
        with self._write_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                self.last_flush = self._clock()
                return 0
            rows = [(*key, int(v[0]), v[1], int(v[2]), int(v[3])) for key, v in pending.items()]
            try:
                with transaction(self._db) as conn:
                    conn.executemany(_INSERT_ZERO, [r[:4] for r in rows])
                    conn.executemany(_ADD, [r[4:] + r[:4] for r in rows])
                    faults.point("classlog.flush")
            except (sqlite3.Error, OSError) as e:
                with self._lock:
                    for key, v in pending.items():
                        row = self._pending.setdefault(key, [0, 0.0, 0, 0])
                        for i in range(FIELDS):
                            row[i] += v[i]
                raise ServiceError(f"flushing class counts to {self.path} failed: {e}") from e
            self.last_flush = self._clock()
            return len(rows)

    def histogram(self, minutes: int, origin: str = "served", model_version: Optional[str] = None,
                  now: Optional[float] = None) -> Dict[int, int]:
        """Flushed counts per class over the last ``minutes`` minutes (the current one included)."""
        end = int((self._clock() if now is None else now) // 60)
        sql = "SELECT class_id, SUM(n) FROM counts WHERE origin = ? AND minute > ? AND minute <= ?"
        args: list = [origin, end - minutes, end]
        if model_version is not None:
            sql += " AND model_version = ?"
            args.append(model_version)
        return {int(k): int(n) for k, n in read_rows(self.path, sql + " GROUP BY class_id ORDER BY class_id", args)}

    def series(self, window_minutes: int, windows: int, origin: str = "served",
               now: Optional[float] = None) -> List[Dict[int, int]]:
        """Class histograms of ``windows`` consecutive windows, oldest first, the last ending now."""
        end = int((self._clock() if now is None else now) // 60)
        start = end - window_minutes * windows
        out: List[Dict[int, int]] = [{} for _ in range(windows)]
        rows = read_rows(self.path, "SELECT minute, class_id, SUM(n) FROM counts WHERE origin = ? AND minute > ? AND minute <= ? "
                          "GROUP BY minute, class_id", [origin, start, end])
        for minute, k, n in rows:
            w = (minute - start - 1) // window_minutes
            out[w][int(k)] = out[w].get(int(k), 0) + int(n)
        return out

    def totals_by_version(self, origin: str = "served") -> Dict[str, Dict[str, float]]:
        """Per model version: predictions, mean confidence and low-confidence share (all flushed time)."""
        rows = read_rows(self.path, "SELECT model_version, SUM(n), SUM(conf_sum), SUM(lowconf_n) FROM counts WHERE origin = ? "
                          "GROUP BY model_version", [origin])
        return {v: {"n": int(n), "mean_confidence": c / n, "low_confidence_share": lo / n} for v, n, c, lo in rows}

    def fallback(self, minutes: int, model_version: Optional[str] = None, now: Optional[float] = None
                 ) -> Dict[int, Tuple[int, int]]:
        """Per class over the last ``minutes`` minutes (flushed): (served answers, those a cascade's base
        gave). A share that rises is an early drift signal: frames the specialist is unsure of."""
        end = int((self._clock() if now is None else now) // 60)
        sql = "SELECT class_id, SUM(n), SUM(fallback_n) FROM counts WHERE origin = 'served' AND minute > ? AND minute <= ?"
        args: list = [end - minutes, end]
        if model_version is not None:
            sql += " AND model_version = ?"
            args.append(model_version)
        return {int(k): (int(n), int(b)) for k, n, b in read_rows(self.path, sql + " GROUP BY class_id ORDER BY class_id", args)}

    def retain(self, keep_minutes: int, now: Optional[float] = None) -> int:
        """Delete rows older than ``keep_minutes``; returns how many went."""
        cutoff = int((self._clock() if now is None else now) // 60) - keep_minutes
        with self._write_lock:
            cur = self._db.execute("DELETE FROM counts WHERE minute <= ?", (cutoff,))
            return int(cur.rowcount)

    def close(self) -> None:
        """Flush what is pending and close; when that last flush fails (a full disk), the counts
        since the previous flush are lost, which is logged, and the file is closed anyway."""
        try:
            self.flush()
        except ServiceError as e:
            log.error("closing the class log lost %d count rows: %s", len(self._pending), e)
        finally:
            self._db.close()
