"""The ``models`` table: every model version this device has loaded or made, what it is (classes,
MACs, parameters, metrics from its card) and its status (``serving``, ``teacher``, ``retired``,
``refused``; the control plane adds ``candidate``, ``rejected``, ``last_good``). A record for people
(``ocapctl models``, reports), not state anything acts on: a write that fails is logged, not raised, so
a full disk cannot make a swap that happened look failed."""

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ocap_core import strict_json
from ocap_core.package import Card

from .db import read_rows, write
from .errors import ServiceError

log = logging.getLogger(__name__)

# recorded the first time, its status set every time: two statements (UPSERT needs SQLite 3.24; db.py)
_INSERT = ("INSERT OR IGNORE INTO models (version, parent, created, class_ids_json, macs, params, metrics_json, "
           "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_SET_STATUS = "UPDATE models SET status = ? WHERE version = ?"


class ModelTable:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def put(self, card: Card, status: str) -> None:
        """Record a model from its card (first time) and set its status."""
        m = card.metrics
        row = (card.version, card.parent, card.created, strict_json.dumps(list(card.class_ids)), m.get("macs"),
               m.get("params"), strict_json.dumps(m, default=str), status)
        self._write(f"model {card.version} not recorded as {status}", (_INSERT, row), (_SET_STATUS, (status, card.version)))

    def set_status(self, version: str, status: str) -> None:
        self._write(f"model {version} not marked {status}", (_SET_STATUS, (status, version)))

    def _write(self, what: str, *statements: Tuple[str, Sequence]) -> None:
        try:
            write(self.path, *statements)
        except ServiceError as e:
            log.error("%s: %s", what, e)

    def all(self) -> List[Dict[str, Any]]:
        """Every recorded model, newest first."""
        rows = read_rows(self.path, "SELECT version, parent, created, class_ids_json, macs, params, metrics_json, "
                                    "status FROM models ORDER BY created DESC")
        return [{"version": v, "parent": p, "created": c, "class_ids": json.loads(k), "macs": macs,
                 "params": params, "metrics": json.loads(mj), "status": st}
                for v, p, c, k, macs, params, mj, st in rows]
