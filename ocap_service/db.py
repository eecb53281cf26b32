"""The serving plane's SQLite file (DESIGN.md §SQLite schema): open it in WAL mode, bring its schema up
to date by ``PRAGMA user_version`` migrations, and the few ways the tables' code touches it.

Plain ``sqlite3``, no wrapper: the schema is append-only SQL keyed by ``user_version``, the hot path (the
class log's flush) is an increment no table API expresses, and the reads are a handful of fixed
queries. The SQL runs on SQLite 3.22 (JetPack 4.6's): no UPSERT (``ON CONFLICT ... DO UPDATE``, 3.24),
whose syntax error there meant that class counts were never written; an insert-or-ignore of the row
then an update of it does the same in one transaction. Who writes which table through which
connection: docs/architecture.md, "SQLite"."""

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from .errors import ServiceError

# How long a write waits for another connection's write to the same file (SQLite's busy timeout):
# every writing connection sets it, so writers take turns instead of failing with "database is locked".
BUSY_TIMEOUT_S = 5.0

# Migration i (1-based) takes a file from user_version i-1 to i. Append, never edit.
MIGRATIONS: List[List[str]] = [
    [
        "CREATE TABLE counts (minute INTEGER NOT NULL, model_version TEXT NOT NULL, origin TEXT NOT NULL, "
        "class_id INTEGER NOT NULL, n INTEGER NOT NULL, conf_sum REAL NOT NULL, lowconf_n INTEGER NOT NULL, "
        "PRIMARY KEY (minute, model_version, origin, class_id))",
        "CREATE TABLE events (ts REAL NOT NULL, kind TEXT NOT NULL, detail_json TEXT NOT NULL DEFAULT '{}')",
        "CREATE INDEX events_ts ON events (ts)",
        "CREATE TABLE models (version TEXT PRIMARY KEY, parent TEXT, created TEXT, class_ids_json TEXT, "
        "macs INTEGER, params INTEGER, metrics_json TEXT, status TEXT)",
        "CREATE TABLE samples (id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL, confidence REAL, score REAL, "
        "split TEXT NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL)",
    ],
    [   # a cascade's answers given by its base (ocap_core/cascade.py)
        "ALTER TABLE counts ADD COLUMN fallback_n INTEGER NOT NULL DEFAULT 0",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def open_db(path: Path) -> sqlite3.Connection:
    """A long-lived connection to the database at ``path`` (created if missing): WAL, synchronous=NORMAL,
    the busy timeout, autocommit (``transaction`` groups statements), usable from any thread (its owner
    serialises use with a lock of its own), schema migrated."""
    path = Path(path)
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise ServiceError(f"cannot open the database {path}: {e}") from e
    if version > SCHEMA_VERSION:
        conn.close()
        raise ServiceError(f"database {path} has schema version {version}, newer than this ocap's "
                           f"{SCHEMA_VERSION}; upgrade ocap or move the file aside")
    for v in range(version, SCHEMA_VERSION):
        try:
            with transaction(conn):
                if conn.execute("PRAGMA user_version").fetchone()[0] > v:
                    continue                # another connection migrated it while this one waited
                for sql in MIGRATIONS[v]:
                    conn.execute(sql)
                conn.execute(f"PRAGMA user_version={v + 1}")
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ServiceError(f"migrating database {path} to schema version {v + 1} failed: {e}") from e
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on an ``open_db`` connection, ``ROLLBACK`` when the body raises.
    IMMEDIATE takes the write lock first, where the busy timeout applies, so a transaction waits for
    another connection's write rather than failing half-way."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:             # a failed COMMIT (a full disk) may leave it open
            conn.execute("ROLLBACK")
        raise


def read_rows(path: Path, sql: str, args: Sequence = ()) -> List[tuple]:
    """Rows of a read-only query on a connection of its own, so readers never wait on the writer."""
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql, tuple(args)).fetchall()
    finally:
        conn.close()


def write(path: Path, *statements: Tuple[str, Sequence]) -> None:
    """Statements, each (sql, args), committed together on a short connection of its own (for rare
    writes: events, models)."""
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
        try:
            with conn:
                for sql, args in statements:
                    conn.execute(sql, tuple(args))
        finally:
            conn.close()
    except sqlite3.Error as e:
        first = statements[0][0].split("(")[0].strip() if statements else ""
        raise ServiceError(f"writing to the database {path} failed ({first}): {e}") from e
