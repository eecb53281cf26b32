"""Policy settings declared once. A policy module's config dataclass declares each field with
``setting(kind, default, help, range)``; ocapd's INI schema (``config.py``) builds that section's keys
from the declarations, and the dataclass checks the same ranges when it is made in code. So a key has
one type, one default, one range and one meaning, wherever it is read."""

import dataclasses
import re
from typing import Any, Callable, Dict, Tuple

from .errors import DaemonError

# value kinds, as the INI schema names them (ocap_daemon/config.py converts the text)
INT, FLOAT, DURATION, AUTO_FLOAT = "int", "float", "duration", "auto or float"


def setting(kind: str, default: Any, help: str, range: str = "") -> Any:
    """A dataclass field that is also an INI key: its kind, its default (seconds for a duration, None
    for auto), one line of help, and the allowed range (``> 0``, ``>= 2``, ``[0, 1]``, ``(0, 1]``)."""
    return dataclasses.field(default=default, metadata={"kind": kind, "help": help, "range": range})


def default_text(kind: str, value: Any) -> str:
    """A default as the annotated INI shows it: ``auto``, ``10min``, ``30s``, ``50ms``, ``0.1``."""
    if value is None:
        return "auto"
    if kind == DURATION:
        for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1), ("ms", 0.001)):
            n = value / seconds
            if value and abs(n - round(n)) < 1e-9:
                return f"{int(round(n))}{unit}"
        return f"{value:g}s"
    return f"{value:g}" if isinstance(value, float) else str(value)


def declared(cls: type) -> Dict[str, Dict[str, Any]]:
    """The settings of a config dataclass: field name -> kind, default, help, range, in field order."""
    return {f.name: dict(f.metadata, default=f.default) for f in dataclasses.fields(cls) if "kind" in f.metadata}


def bounds(range_text: str, conv: Callable[[str], Any] = float) -> Tuple[Any, bool, Any, bool]:
    """``range`` -> (low, low exclusive, high, high exclusive), None where unbounded; the bounds are
    converted by ``conv`` (the INI converts them as the key's values: ``>= 1MB``, ``> 0``)."""
    r = range_text.replace(" ", "")
    if not r:
        return None, False, None, False
    m = re.fullmatch(r"(>=|>|<=|<)(.+)", r)
    if m:
        op, bound = m.group(1), conv(m.group(2))
        return (bound, op == ">", None, False) if op[0] == ">" else (None, False, bound, op == "<")
    m = re.fullmatch(r"([\[(])(.+),(.+)([\])])", r) or re.fullmatch(r"()(.+)\.\.(.+)()", r)
    if not m:
        raise ValueError(f"bad range {range_text!r}")
    return conv(m.group(2)), m.group(1) == "(", conv(m.group(3)), m.group(4) == ")"


def within(value: float, range_text: str) -> bool:
    """Is ``value`` inside ``range_text``?"""
    lo, lo_open, hi, hi_open = bounds(range_text)
    return not ((lo is not None and (value < lo or (lo_open and value == lo)))
                or (hi is not None and (value > hi or (hi_open and value == hi))))


def check(obj: Any, section: str) -> None:
    """Every declared setting of ``obj`` within its range (None: derived later, not checked)."""
    for name, decl in declared(type(obj)).items():
        value = getattr(obj, name)
        if value is None or not decl["range"]:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not within(value, decl["range"]):
            raise DaemonError(f"[{section}] {name} = {value!r}: expected a number {_as_text(decl['range'])}")


def _as_text(range_text: str) -> str:
    return "in " + range_text if range_text[0] in "[(" or ".." in range_text else range_text
