"""The class log, events and models tables on SQLite 3.21, older than JetPack 4.6's 3.22 and, like it,
without UPSERT (3.24): real files, a real library of that age (built by scripts/old_sqlite.sh) loaded
into a child Python through LD_LIBRARY_PATH. Counts flushed there must be written and add up: with the
UPSERT the flush failed with a syntax error and no count was ever stored."""

import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import captured

ROOT = Path(__file__).resolve().parents[2]

CHILD = r'''
import json, sqlite3, sys
from pathlib import Path
from ocap_core.package import open_package, resolve_model
from ocap_service.class_log import ClassLog
from ocap_service.events import EventLog
from ocap_service.model_table import ModelTable

db = Path(sys.argv[1])
log = ClassLog(db, clock=lambda: 600.0)
log.add([0, 0, 3], [0.9, 0.4, 0.8], "v1")
log.add([3], [0.7], "v1", fell_back=[True])
first = log.flush()
log.add([0, 7], [0.95, 0.3], "v1")              # the same minute: adds to the rows written above
log.add([0], [0.6], "v1", origin="teacher")
second = log.flush()
events = EventLog(db)
events.record("swap", to="v1", ok=True)
events.record("gate", passed=False)
table = ModelTable(db)
card = open_package(resolve_model("fmnist-cnn")).card
table.put(card, "serving")
table.put(card, "teacher")
table.set_status(card.version, "retired")
rows = sqlite3.connect(str(db)).execute(
    "SELECT origin, class_id, n, lowconf_n, fallback_n FROM counts ORDER BY origin, class_id").fetchall()
print(json.dumps({"version": sqlite3.sqlite_version, "flushed": [first, second], "rows": rows,
                  "histogram": {str(k): v for k, v in log.histogram(5, now=600.0).items()},
                  "events": [e["kind"] for e in events.recent()],
                  "split": sorted([list(k) + [n] for k, n in events.counts(["swap"], split="ok").items()]),
                  "models": [(m["version"], m["status"]) for m in table.all()], "card": card.version}))
log.close()
'''


@pytest.fixture(scope="module")
def old_sqlite() -> str:
    r = captured(["bash", str(ROOT / "scripts" / "old_sqlite.sh")], timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.slow
def test_counts_events_and_models_are_written_on_sqlite_without_upsert(old_sqlite, tmp_path):
    env = dict(os.environ, LD_LIBRARY_PATH=old_sqlite + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
    r = captured([sys.executable, "-c", CHILD, str(tmp_path / "ocap.db")],
                 cwd=str(ROOT), env=env, timeout=120)
    if "undefined symbol: sqlite3_create_window_function" in r.stderr:
        pytest.skip(f"Python {sys.version_info[0]}.{sys.version_info[1]}'s sqlite3 needs SQLite >= 3.25 to load; "
                    "the torch-free half (Python 3.8, as JetPack's) runs this test")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["version"] == "3.21.0"                  # the old library, not the system's
    assert out["flushed"] == [2, 3]
    assert out["rows"] == [["served", 0, 3, 1, 0], ["served", 3, 2, 0, 1], ["served", 7, 1, 1, 0],
                           ["teacher", 0, 1, 0, 0]]
    assert out["histogram"] == {"0": 3, "3": 2, "7": 1}
    assert out["events"] == ["gate", "swap"] and out["split"] == [["swap", 1, 1]]   # json_extract (JSON1)
    assert out["models"] == [[out["card"], "retired"]]
