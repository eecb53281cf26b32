"""The events and models tables on a real SQLite file: append and read back, kinds, statuses, and
concurrent writers next to the class log's flushes."""

import threading

import pytest

from ocap_core.package import open_package, resolve_model
from ocap_service.class_log import ClassLog
from ocap_service.errors import ServiceError
from ocap_service.event_kinds import Event
from ocap_service.events import EventLog
from ocap_service.model_table import ModelTable
from tests.ocap_service.threads import run_threads


def test_events_newest_first_by_kind(tmp_path):
    ClassLog(tmp_path / "ocap.db").close()              # makes the schema
    ev = EventLog(tmp_path / "ocap.db")
    for i in range(5):
        ev.record("swap" if i % 2 else "gate", n=i, path=tmp_path)
    assert [e["detail"]["n"] for e in ev.recent()] == [4, 3, 2, 1, 0]
    assert [e["detail"]["n"] for e in ev.recent(kinds=["swap"])] == [3, 1]
    assert ev.recent(limit=1)[0]["detail"]["path"] == str(tmp_path)


def test_models_are_recorded_once_and_change_status(tmp_path):
    ClassLog(tmp_path / "ocap.db").close()
    table = ModelTable(tmp_path / "ocap.db")
    card = open_package(resolve_model("fmnist-cnn")).card
    table.put(card, "serving")
    table.put(card, "teacher")
    rows = table.all()
    assert len(rows) == 1 and rows[0]["status"] == "teacher" and rows[0]["macs"] == card.metrics["macs"]
    assert rows[0]["class_ids"] == list(range(10))
    table.set_status(card.version, "retired")
    assert table.all()[0]["status"] == "retired"


def test_a_failed_write_is_logged_not_raised(tmp_path, caplog):
    """A full or failing disk must not stop what the record is about (a swap that has happened)."""
    card = open_package(resolve_model("fmnist-cnn")).card
    nowhere = tmp_path / "missing" / "ocap.db"
    ModelTable(nowhere).put(card, "serving")
    ModelTable(nowhere).set_status(card.version, "retired")
    assert EventLog(nowhere).record("swap", to="x")["kind"] == "swap"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and f"model {card.version} not recorded as serving" in errors[0], errors
    assert "missing" in errors[0] and f"model {card.version} not marked retired" in errors[1]


def test_concurrent_writers_lose_no_event(tmp_path, tiny_switch_interval):
    """Eight threads record events while the class log flushes in a loop on the same file: every
    event is there once (each write waits for the writer lock instead of failing)."""
    log = ClassLog(tmp_path / "ocap.db")
    ev = EventLog(tmp_path / "ocap.db")
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            log.add([1, 2, 3], [0.9, 0.9, 0.9], "v1")
            log.flush()

    f = threading.Thread(target=flusher)
    f.start()
    run_threads(lambda k: [ev.record(Event.SWAP, k=k, i=i) for i in range(25)])
    stop.set()
    f.join()
    log.close()
    got = sorted((e["detail"]["k"], e["detail"]["i"]) for e in ev.recent(limit=1000, kinds=[Event.SWAP]))
    assert got == [(k, i) for k in range(8) for i in range(25)]


def _mixed_events(tmp_path):
    ClassLog(tmp_path / "ocap.db").close()
    ev = EventLog(tmp_path / "ocap.db")
    for detail in [{"outcome": "deployed"}, {"outcome": "deployed"}, {"outcome": "rejected"}, {}, {"outcome": None},
                   {"outcome": True}, {"outcome": 3}, {"outcome": 2.5}]:
        ev.record("gate", **detail)
    ev.record("swap", outcome="deployed")
    ev.record("deploy", outcome="deployed")
    return ev


def test_counts_split_by_a_detail_agree_with_and_without_sqlite_json(tmp_path):
    ev = _mixed_events(tmp_path)
    sql = ev.counts(["gate", "swap"], split="outcome")
    assert sql[("gate", "deployed")] == 2 and sql[("gate", None)] == 2 and sql[("swap", "deployed")] == 1
    assert ("deploy", "deployed") not in sql
    assert ev._counts_from_rows(["gate", "swap"], "outcome") == sql
    assert ev._counts_from_rows(["gate"], "") == ev.counts(["gate"]) == {("gate", None): 8}


def test_a_sqlite_without_json_functions_still_gets_counts(tmp_path, monkeypatch):
    """A fake for a fault this machine cannot cause (its SQLite has JSON built in): the grouped query
    fails the way a build without JSON1 does."""
    import sqlite3

    import ocap_service.events as events

    ev = _mixed_events(tmp_path)
    want = ev.counts(["gate"], split="outcome")
    real = events.read_rows

    tried = []

    def no_json(path, sql, args=()):
        if "json_extract" in sql:
            tried.append(sql)
            raise sqlite3.OperationalError("no such function: json_extract")
        return real(path, sql, args)

    monkeypatch.setattr(events, "read_rows", no_json)
    assert ev.counts(["gate"], split="outcome") == want
    assert ev.counts(["gate"], split="outcome") == want and len(tried) == 1     # asked once, then remembered


def test_a_kind_declared_nowhere_is_refused_naming_the_file(tmp_path):
    ClassLog(tmp_path / "ocap.db").close()              # makes the schema
    log = EventLog(tmp_path / "ocap.db")
    with pytest.raises(ServiceError, match=r"no event kind 'deploy_fialed' is declared in ocap_service/event_kinds.py"):
        log.record("deploy_fialed", reason="typo")
    with pytest.raises(ServiceError, match="deploy_fialed"):
        log.recent(kinds=["deploy_fialed"])
    log.record(Event.DEPLOY_FAILED, reason="x")
    assert [e["kind"] for e in log.recent(kinds=["deploy_failed"])] == ["deploy_failed"]


def test_writers_and_readers_name_kinds_through_the_registry():
    """No event is written with a bare string: the registry is the one place kinds are spelled."""
    import re

    from tests.helpers import ROOT

    bare = re.compile(r"""(record|_trouble)\(\s*["']""")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for d in ("ocap_service", "ocap_daemon", "bench")
                 for p in sorted((ROOT / d).glob("*.py"))
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bare.search(line)]
    assert offenders == []
