"""The events and models tables on a real SQLite file: append and read back, kinds, statuses."""

from ocap_core.package import open_package, resolve_model
from service.class_log import ClassLog
from service.events import EventLog
from service.model_table import ModelTable


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
