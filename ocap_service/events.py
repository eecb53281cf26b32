"""The ``events`` table: one row per thing that happened and why (model loads and swaps, refused
loads, cache resets here; personalization, gate verdicts, deploys, drift and rollbacks from the
control plane), details as JSON. Events are rare, so each write uses a short connection of its own."""

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ocap_core import strict_json

from .db import read_rows, write
from .errors import ServiceError
from .event_kinds import kind_name

log = logging.getLogger(__name__)


class EventLog:
    """Append and read events in the database at ``path`` (its schema made by ``open_db``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._json_functions = True             # False once SQLite said it has no json_extract

    def record(self, kind: str, **detail: Any) -> Dict[str, Any]:
        """Append one event of a declared ``kind`` (``event_kinds.Event``) now; returns it as ``recent``
        would. A write that fails is logged, not raised; an undeclared kind is a ServiceError."""
        kind = kind_name(kind)
        ev = {"ts": time.time(), "kind": kind, "detail": detail}
        try:
            write(self.path, ("INSERT INTO events (ts, kind, detail_json) VALUES (?, ?, ?)",
                              (ev["ts"], kind, strict_json.dumps(detail, default=str))))
        except ServiceError as e:     # a full or failing disk must not stop what the event is about
            log.error("event %s not recorded: %s", kind, e)
        return ev

    def recent(self, limit: int = 50, kinds: Optional[Sequence[str]] = None,
               since: Optional[float] = None) -> List[Dict[str, Any]]:
        """The latest ``limit`` events, newest first, optionally of some kinds or after a time."""
        sql, args = "SELECT ts, kind, detail_json FROM events WHERE ts >= ?", [since or 0.0]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += [kind_name(k) for k in kinds]
        rows = read_rows(self.path, sql + " ORDER BY ts DESC, rowid DESC LIMIT ?", args + [int(limit)])
        return [{"ts": ts, "kind": kind, "detail": json.loads(d)} for ts, kind, d in rows]

    def counts(self, kinds: Sequence[str], split: str = "") -> Dict[Tuple[str, Any], int]:
        """How many events of each of ``kinds`` the table holds (all time: the metrics' counters that
        survive restarts), by (kind, the detail's ``split`` value, or None). One grouped query; the
        split reads the JSON with SQLite's ``json_extract`` (built in since SQLite 3.38, the JSON1
        extension before: a build without it, which an old system library may be, gets the same counts
        from the rows, ``_counts_from_rows``)."""
        if not kinds:
            return {}
        if split and not self._json_functions:      # the library does not change under a running daemon
            return self._counts_from_rows(kinds, split)
        value = "json_extract(detail_json, ?)" if split else "NULL"
        args: list = ([f"$.{split}"] if split else []) + [kind_name(k) for k in kinds]
        try:
            rows = read_rows(self.path, f"SELECT kind, {value}, COUNT(*) FROM events "
                                        f"WHERE kind IN ({','.join('?' * len(kinds))}) GROUP BY 1, 2", args)
        except sqlite3.OperationalError as e:
            if "json_extract" not in str(e):
                raise
            self._json_functions = False
            return self._counts_from_rows(kinds, split)
        return {(kind, v): int(n) for kind, v, n in rows}

    def _counts_from_rows(self, kinds: Sequence[str], split: str) -> Dict[Tuple[str, Any], int]:
        """``counts`` without SQLite's JSON functions: every detail of those kinds read and parsed here."""
        out: Dict[Tuple[str, Any], int] = {}
        rows = read_rows(self.path, f"SELECT kind, detail_json FROM events "
                                    f"WHERE kind IN ({','.join('?' * len(kinds))})", list(kinds))
        for kind, detail in rows:
            value = json.loads(detail).get(split) if split else None
            if isinstance(value, bool):           # json_extract gives SQLite integers for JSON booleans
                value = int(value)
            key = (kind, value if not isinstance(value, (dict, list)) else strict_json.dumps(value))
            out[key] = out.get(key, 0) + 1
        return out
