"""The resource guard's readings on a faked sysfs thermal tree (this machine exposes no sensors), through
a stand-in for jetson-stats' jtop (see below), and its verdicts against the configured limits."""

import logging
import socket
import sys
import types
from types import SimpleNamespace

import psutil
import pytest

from ocap_daemon import telemetry

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


# ---- jetson-stats --------------------------------------------------------------------------------------
# jetson-stats is not installed here and its service cannot run off a Jetson, so these tests put a
# STAND-IN module named ``jtop`` into sys.modules. It has the interface the telemetry uses, as jetson-stats
# 4.x to 7.x define it (jtop/jtop.py, jtop/core/temperature.py): a ``jtop`` class used as a context
# manager, whose ``__enter__`` starts the client (raising ``JtopException`` when jtop.service is not
# active), and a ``temperature`` dict of {sensor: {"temp": degrees C, "online": bool, ...}} in which an
# offline sensor reads -256. The service's socket is a real Unix socket bound under tmp_path.

OFFLINE = -256.0


def _stand_in_jtop(temperatures=None, fails=None):
    """A module with jtop's interface; ``clients`` counts the clients made (connections tried)."""
    mod = types.ModuleType("jtop")

    class JtopException(Exception):
        pass

    class jtop:  # noqa: N801 - jetson-stats' own class name
        def __init__(self, interval=1.0):
            mod.clients += 1

        def __enter__(self):
            if fails:
                raise JtopException(fails)
            return self

        def __exit__(self, *exc):
            return False

        @property
        def temperature(self):
            return temperatures

    mod.jtop, mod.JtopException, mod.clients = jtop, JtopException, 0
    return mod


@pytest.fixture
def jtop_socket(tmp_path, monkeypatch):
    """A real Unix socket where jtop.service would listen, and the telemetry pointed at it, unbroken."""
    path = tmp_path / "jtop.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    monkeypatch.setattr(telemetry, "JTOP_SOCKET", path)
    monkeypatch.setattr(telemetry, "_jtop_broken", False)
    yield path
    sock.close()


SENSORS = {"CPU": {"temp": 48.5, "online": True, "max": 104.5, "crit": 105.0},
           "GPU": {"temp": 51.25, "online": True, "max": 104.5, "crit": 105.0},
           "PMIC": {"temp": OFFLINE, "online": False}}


def test_jtop_gives_the_hottest_online_sensor(jtop_socket, thermal, monkeypatch):
    mod = _stand_in_jtop(dict(SENSORS, Tboard={"temp": 200.0, "online": False}))
    monkeypatch.setitem(sys.modules, "jtop", mod)
    assert telemetry.temperature(thermal) == 51.25          # jtop first: not the faked sysfs' 85.5
    assert mod.clients == 1


def test_jtop_with_every_sensor_offline_falls_through_to_sysfs(jtop_socket, thermal, monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", _stand_in_jtop({"PMIC": {"temp": OFFLINE, "online": False}}))
    assert telemetry.temperature(thermal) == 85.5
    assert telemetry._jtop_broken is False                   # no reading is not a failure: asked again next time


def test_a_failing_jtop_is_dropped_for_good(jtop_socket, thermal, monkeypatch, caplog):
    mod = _stand_in_jtop(SENSORS, fails="The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service")
    monkeypatch.setitem(sys.modules, "jtop", mod)
    with caplog.at_level(logging.INFO, logger="ocap_daemon.telemetry"):
        assert telemetry.temperature(thermal) == 85.5
        assert telemetry.temperature(thermal) == 85.5
    assert mod.clients == 1                                   # not tried again: the fallback holds
    assert sum("jetson-stats unavailable" in r.getMessage() for r in caplog.records) == 1


def test_without_the_socket_jtop_is_not_imported(tmp_path, thermal, monkeypatch):
    monkeypatch.setattr(telemetry, "JTOP_SOCKET", tmp_path / "none.sock")
    monkeypatch.setattr(telemetry, "_jtop_broken", False)
    mod = _stand_in_jtop(SENSORS)
    monkeypatch.setitem(sys.modules, "jtop", mod)
    assert telemetry.temperature(thermal) == 85.5 and mod.clients == 0


def test_jtop_temperature_decides_the_resource_guard(jtop_socket, tmp_path, monkeypatch):
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    monkeypatch.setitem(sys.modules, "jtop", _stand_in_jtop({"CPU": {"temp": 91.0, "online": True}}))
    assert telemetry.resource_problem(LIMITS, {}, tmp_path) == "temperature 91 °C over 80 °C"
