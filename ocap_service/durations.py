"""The one duration syntax of ocap: ocapd's INI keys (``window = 10min``) and replay class mixes
(``0:1,3:1@10min``) read durations with ``parse_duration``, so both accept exactly the same spellings.

A duration is a non-negative number and an optional unit: ``ms``, ``s``, ``m`` or ``min``, ``h``, ``d``
(``250ms``, ``30s``, ``10m``, ``10min``, ``1.5h``, ``1d``); a bare number is seconds; space between the
number and the unit is allowed and units are case-insensitive. ``m`` is minutes as in systemd.time(7)
(the unit file's own time spans), and as the replay mixes have always read it; the documentation
writes ``min``. ``M`` alone is refused: systemd reads it as months. Everything else (``10 sec``,
``5min 3s``, ``1e3s``, ``-5s``, ``inf``) is refused with a one-line reason.
"""

import re

from .errors import ServiceError

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
EXAMPLES = "250ms, 10s, 30min, 1.5h, 1d"
SYNTAX = f"a number and a unit ms, s, min (or m), h or d (e.g. {EXAMPLES}); a bare number is seconds"
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")


class DurationError(ServiceError):
    """A duration that cannot be read; the message is one line: the text, why, and ``SYNTAX``.
    ``reason`` is the why alone ("" when ``SYNTAX`` says it all), for callers that name the key and
    what it allows themselves (ocapd's config)."""

    def __init__(self, text: str, reason: str = "") -> None:
        self.text, self.reason = text, reason
        super().__init__(f"bad duration {text!r}: {reason + '; ' if reason else ''}expected {SYNTAX}")


def parse_duration(text: str) -> float:
    """``250ms``, ``10s``, ``10m``/``10min``, ``2h``, ``1d``, ``1.5h`` or a bare number of seconds ->
    seconds (``DurationError`` otherwise)."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise DurationError(text)
    number, unit = m.groups()
    if unit == "M":
        raise DurationError(text, "'M' is months to systemd and minutes to others: write 'min' (or 'd')")
    if (unit.lower() or "s") not in UNITS:
        raise DurationError(text, f"unknown unit {unit!r}")
    return float(number) * UNITS[unit.lower() or "s"]
