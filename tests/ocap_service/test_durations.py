"""ocap_service.durations: the one duration syntax of ocapd's INI keys and of replay class mixes (issue 14:
``parse_mix`` took ``10m`` where the config refused it)."""

import pytest

from ocap_service.durations import SYNTAX, DurationError, parse_duration
from ocap_service.errors import ServiceError
from ocap_service.sources import parse_mix

ACCEPTED = [
    ("250ms", 0.25), ("10s", 10), ("30min", 1800), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1.5h", 5400),
    ("5", 5), ("0.5", 0.5), (".5s", 0.5), ("10 s", 10), ("2H", 7200), (" 3min ", 180), ("3MIN", 180), ("0", 0),
    ("1.", 1),
]
REFUSED = [
    # (text, what the one-line message says besides the text and the syntax)
    ("", ""), ("m", ""), ("h", ""), ("abc", ""), ("-5s", ""), ("1e3s", ""), ("5min 3s", ""), ("nan", ""),
    ("inf", ""), ("10ms5", ""), ("1,5h", ""),
    ("10 sec", "unknown unit 'sec'"), ("10mins", "unknown unit 'mins'"), ("3w", "unknown unit 'w'"),
    ("10M", "write 'min'"),
]


@pytest.mark.parametrize("text, seconds", ACCEPTED)
def test_accepted(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, reason", REFUSED)
def test_refused_with_one_line_naming_the_text(text, reason):
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    msg = str(info.value)
    assert isinstance(info.value, ServiceError) and "\n" not in msg
    assert msg.startswith(f"bad duration {text!r}: ") and msg.endswith("expected " + SYNTAX), msg
    assert reason in info.value.reason and reason in msg and bool(reason) == bool(info.value.reason)


@pytest.mark.parametrize("text, seconds", [(t, s) for t, s in ACCEPTED if s > 0])
def test_a_mix_reads_a_segments_duration_as_the_config_does(text, seconds):
    """The bug of issue 14: ``@10m`` was a mix's minutes and the config's error; now one parser reads both."""
    mix = parse_mix(f"0:1,3:1@{text}; 7:1@{text}", 10)
    assert [m[2] for m in mix] == [pytest.approx(seconds)] * 2


@pytest.mark.parametrize("text, fragment", [
    ("0:1@0s", "its duration must be > 0"),                 # a cycle of no length cannot be replayed
    ("0:1@10M", "write 'min'"),
    ("0:1@10 sec", "unknown unit 'sec'"),
    ("0:1@", "bad duration ''"),
    ("0:1@@1s", "bad item"),
    ("@1s", "CLASS:SHARE"),
])
def test_a_mix_refuses_a_bad_duration_naming_the_segment(text, fragment):
    with pytest.raises(ServiceError) as info:
        parse_mix(text, 10)
    msg = str(info.value)
    assert msg.startswith(f"class mix segment {text!r}: ") and fragment in msg and "\n" not in msg, msg
