"""Device readings for the resource guard: the hottest temperature sensor (jetson-stats when its
service runs, else psutil, else ``/sys/class/thermal``), available memory, and whether any of them,
or the serving latency, is past the configured limits."""

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import psutil

log = logging.getLogger(__name__)
THERMAL_ROOT = Path("/sys/class/thermal")
JTOP_SOCKET = Path("/run/jtop.sock")
_jtop_broken = False


def _jtop_temperature() -> Optional[float]:
    """jtop reads the Jetson's own sensors; it is optional (AGPL, a service of its own) and can fail."""
    global _jtop_broken
    if _jtop_broken or not JTOP_SOCKET.exists():
        return None
    try:
        from jtop import jtop  # lazily: importing it changes multiprocessing's start method

        with jtop() as j:
            temps = [float(v["temp"]) for v in j.temperature.values() if v.get("online", True) and v["temp"] > -200]
        return max(temps) if temps else None
    except Exception as e:  # no service, wrong version, hang-up: fall back for good
        log.info("jetson-stats unavailable (%s); reading temperatures from psutil / sysfs", e)
        _jtop_broken = True
        return None


def temperature(thermal_root: Path = THERMAL_ROOT) -> Optional[float]:
    """Hottest sensor in °C, or None when the device exposes none."""
    t = _jtop_temperature()
    if t is not None:
        return t
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        sensors = {}
    temps = [s.current for entries in sensors.values() for s in entries if s.current is not None]
    if temps:
        return max(temps)
    for zone in sorted(Path(thermal_root).glob("thermal_zone*")):
        try:
            temps.append(int((zone / "temp").read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def free_memory() -> int:
    return int(psutil.virtual_memory().available)


def resource_problem(pcfg: Any, serving: Dict[str, Any], thermal_root: Path = THERMAL_ROOT) -> Optional[str]:
    """Why personalization should not run now (temperature, memory, serving p99), or None."""
    t = temperature(thermal_root)
    if t is not None and t > pcfg.max_temperature:
        return f"temperature {t:.0f} °C over {pcfg.max_temperature:.0f} °C"
    free = free_memory()
    if free < pcfg.min_free_memory:
        return f"{free / 2 ** 20:.0f} MiB free memory, under {pcfg.min_free_memory / 2 ** 20:.0f} MiB"
    p99 = (serving.get("latency_ms") or {}).get("p99")
    if p99 is not None and p99 > pcfg.max_serving_p99 * 1e3:
        return f"serving p99 {p99:.1f} ms over {pcfg.max_serving_p99 * 1e3:.1f} ms"
    return None



