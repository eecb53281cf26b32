"""The resource guard's readings on a faked sysfs thermal tree (this machine exposes no sensors) and
its verdicts against the configured limits."""

from types import SimpleNamespace

import psutil
import pytest

from daemon import telemetry

LIMITS = SimpleNamespace(max_temperature=80.0, min_free_memory=64 * 2 ** 20, max_serving_p99=0.05)


@pytest.fixture
def thermal(tmp_path, monkeypatch):
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})      # the faked tree is the only source
    for i, milli in enumerate(("41000", "85500", "garbage")):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "temp").write_text(milli + "\n")
    return tmp_path


def test_the_hottest_zone_counts(thermal):
    assert telemetry.temperature(thermal) == 85.5


@pytest.mark.parametrize("serving,limits,want", [
    ({"latency_ms": {"p99": 1.0}}, dict(max_temperature=90.0), None),
    ({"latency_ms": {"p99": 1.0}}, {}, "temperature 86 °C over 80 °C"),
    ({"latency_ms": {"p99": 80.0}}, dict(max_temperature=90.0), "serving p99 80.0 ms over 50.0 ms"),
    ({"latency_ms": {"p99": None}}, dict(max_temperature=90.0, min_free_memory=2 ** 60), "MiB free memory"),
])
def test_resource_problems(thermal, serving, limits, want):
    got = telemetry.resource_problem(SimpleNamespace(**dict(vars(LIMITS), **limits)), serving, thermal)
    assert got == want if want is None or "°C" in want or "p99" in want else want in got


def test_no_sensors_is_no_temperature(tmp_path, monkeypatch):
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    assert telemetry.temperature(tmp_path) is None
    assert telemetry.resource_problem(LIMITS, {}, tmp_path) is None
