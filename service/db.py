"""The serving plane's SQLite file (DESIGN.md §SQLite schema): open it in WAL mode and bring its schema
up to date by ``PRAGMA user_version`` migrations. Works with sqlite-utils 3.38 (Python 3.8) and 4.x."""

import sqlite3
from pathlib import Path
from typing import List, Sequence

import sqlite_utils

from .errors import ServiceError

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
]
SCHEMA_VERSION = len(MIGRATIONS)


def open_db(path: Path) -> sqlite_utils.Database:
    """The database at ``path`` (created if missing), WAL, synchronous=NORMAL, schema migrated."""
    path = Path(path)
    try:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise ServiceError(f"cannot open the database {path}: {e}") from e
    if version > SCHEMA_VERSION:
        conn.close()
        raise ServiceError(f"database {path} has schema version {version}, newer than this ocap's "
                           f"{SCHEMA_VERSION}; upgrade ocap or move the file aside")
    for v in range(version, SCHEMA_VERSION):
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql in MIGRATIONS[v]:
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version={v + 1}")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            conn.execute("ROLLBACK")
            conn.close()
            raise ServiceError(f"migrating database {path} to schema version {v + 1} failed: {e}") from e
    return sqlite_utils.Database(conn)


def read_rows(path: Path, sql: str, args: Sequence = ()) -> List[tuple]:
    """Rows of a read-only query on a connection of its own, so readers never wait on the writer."""
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql, tuple(args)).fetchall()
    finally:
        conn.close()


def write(path: Path, sql: str, args: Sequence = ()) -> None:
    """One statement committed on a short connection of its own (for rare writes: events, models)."""
    try:
        conn = sqlite3.connect(str(path), timeout=5.0)
        try:
            with conn:
                conn.execute(sql, tuple(args))
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ServiceError(f"writing to the database {path} failed ({sql.split('(')[0].strip()}): {e}") from e
