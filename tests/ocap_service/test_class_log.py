"""ClassLog on a real SQLite file: counts survive flushes and reopening, windows and versions are kept
apart, concurrent adders lose nothing, a newer schema is refused."""

import sqlite3
import threading

import pytest

from ocap_service.class_log import ClassLog
from ocap_service.db import SCHEMA_VERSION, open_db
from ocap_service.errors import ServiceError

T0 = 1_000_000 * 60.0          # a minute boundary


def test_counts_accumulate_across_flushes_and_reopen(tmp_path):
    log = ClassLog(tmp_path / "ocap.db", low_confidence=0.5, clock=lambda: T0 + 30)
    log.add([3, 3, 7], [0.9, 0.4, 0.8], "v1")
    assert log.flush() == 2 and log.flush() == 0
    log.add([3], [0.2], "v1")
    log.flush()
    log.close()
    log = ClassLog(tmp_path / "ocap.db", clock=lambda: T0 + 30)
    assert log.histogram(1) == {3: 3, 7: 1}
    tot = log.totals_by_version()["v1"]
    assert tot["n"] == 4 and tot["mean_confidence"] == pytest.approx(2.3 / 4) and tot["low_confidence_share"] == 0.5
    con = sqlite3.connect(str(tmp_path / "ocap.db"))
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM counts").fetchone()[0] == 2     # one row per class, not per frame


def test_windows_origins_and_versions_are_kept_apart(tmp_path):
    log = ClassLog(tmp_path / "ocap.db", clock=lambda: T0 + 9 * 60)
    for m in range(10):                       # minute m: class m % 2, twice
        log.add([m % 2, m % 2], [1.0, 1.0], "v1", ts=T0 + m * 60)
    log.add([9], [0.9], "v1", origin="teacher", ts=T0)
    log.add([5], [0.9], "v2", ts=T0 + 9 * 60)
    log.flush()
    assert log.histogram(10) == {0: 10, 1: 10, 5: 1}
    assert log.histogram(10, model_version="v2") == {5: 1}
    assert log.histogram(10, origin="teacher") == {9: 1}
    assert log.histogram(2) == {0: 2, 1: 2, 5: 1}            # minutes 8 and 9
    assert log.series(5, 2) == [{0: 6, 1: 4}, {0: 4, 1: 6, 5: 1}]
    assert log.retain(5) == 5 + 1                              # minutes 0-4 served, plus the teacher row
    assert log.histogram(10) == {0: 4, 1: 6, 5: 1}


def test_concurrent_adders_lose_nothing(tmp_path, tiny_switch_interval):
    """Regression: add() read the pending dict before taking the lock, so an add racing a flush
    wrote into the dict the flush had already taken (724 of 8000 counts lost on a busy machine)."""
    log = ClassLog(tmp_path / "ocap.db", clock=lambda: T0)
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            log.flush()

    def adder(k):
        for _ in range(2000):
            log.add([k], [0.9], "v1")

    f = threading.Thread(target=flusher)
    f.start()
    adders = [threading.Thread(target=adder, args=(k,)) for k in range(8)]
    for t in adders:
        t.start()
    for t in adders:
        t.join()
    stop.set()
    f.join()
    log.flush()
    assert log.histogram(1) == {k: 2000 for k in range(8)}


def test_bad_input_and_a_newer_schema_are_refused(tmp_path):
    log = ClassLog(tmp_path / "ocap.db")
    with pytest.raises(ServiceError, match="origin"):
        log.add([1], [0.5], "v1", origin="other")
    with pytest.raises(ServiceError, match="low_confidence"):
        ClassLog(tmp_path / "x.db", low_confidence=2)
    log.close()
    con = sqlite3.connect(str(tmp_path / "ocap.db"))
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(ServiceError, match=f"ocap.db has schema version {SCHEMA_VERSION + 1}, newer"):
        open_db(tmp_path / "ocap.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ServiceError, match="junk.db"):
        open_db(tmp_path / "junk.db")


def test_a_cascades_fallback_answers_are_counted_per_class_and_an_older_file_is_migrated(tmp_path):
    """A file made by schema 1 (no fallback column) keeps its counts, gains the column at 0, and then
    counts which answers a cascade's base gave."""
    from ocap_service.db import MIGRATIONS

    con = sqlite3.connect(str(tmp_path / "ocap.db"))
    for sql in MIGRATIONS[0]:
        con.execute(sql)
    con.execute("INSERT INTO counts VALUES (?, 'v0', 'served', 4, 5, 4.0, 1)", (int(T0 // 60),))
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    log = ClassLog(tmp_path / "ocap.db", clock=lambda: T0 + 30)
    log.add([4, 4, 6], [0.9, 0.6, 0.95], "v1", fell_back=[True, False, True])
    log.add([6], [0.5], "v1")
    assert log.totals()["served"]["fallback"] == {4: 1, 6: 1}
    log.flush()
    assert log.fallback(1) == {4: (7, 1), 6: (2, 1)}
    assert log.fallback(1, model_version="v0") == {4: (5, 0)}
    log.close()
