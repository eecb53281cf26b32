"""A compressed soak (``ocap bench soak``): ``ocapd`` replays Fashion-MNIST test images from its own
replay source at a high rate for a long time, the mix cycling so that personalize -> gate -> deploy ->
drift -> revert cycles follow each other, while one paced socket client counts failures. Sampled every
5 s: the daemon's RSS, open file descriptors and threads, the database and the sample cache's size.

RSS moves by several MB within a cycle (a gate loads a candidate, the samples export stacks the cache),
so growth is taken at the same point of every cycle: the first sample after each gate (the trim has just
run). Target (issue 15): over the second half of the run, that per-cycle RSS grows ≤ 2 %; descriptors
steady; 0 failed requests. The full run is 130 minutes (100 cycles and more); the worker applies the fixed OCAP rule with few epochs
so that cycles are short (ocapd's memory, not the pruning's quality, is what is measured)."""

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import psutil

from ocap_daemon.demo import demo_config
from ocap_daemon.launch import start_ocapd
from ocap_service.client import Client, ServiceError
from ocap_service.event_kinds import Event

from .report import run_stamp

# two disjoint 3-class sets in turn: each switch is drift (revert to base) and a new stable set, so every
# segment is a personalization cycle; 50 s holds stability, the worker, the gate and a probation on a busy
# 2-core machine (a 3-class set and a fourth joining it gave one cycle per period: 56 in 130 min)
MIX = "0:0.5,3:0.3,7:0.2@50s; 1:0.5,4:0.3,8:0.2@50s"
QUICK_MINUTES, FULL_MINUTES = 0.5, 130.0
GROWTH_TARGET = 0.02            # per-cycle RSS over the second half


def soak_config(work: Path, rate: float) -> str:
    """The demo's INI with short cycles: the fixed rule, 3 epochs, 5 s cooldowns, no daily cap (0)."""
    # [drift] cooldown 5 s: personalize again soon after a revert
    text = demo_config(work, "fmnist-cnn", rate, speed=2.0, epochs=3, budget=120.0, threads=1, max_loss=3.0,
                       rule="personalize", nice=0, cooldown="5s", daily_cap=0, drift_cooldown="5s")
    return text + f"\n[source:replay]\ntype = replay\nrate = {rate:g}\nmix = {MIX}\n"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run(quick: bool = False, rate: float = 300.0, minutes: Optional[float] = None,
        samples_path: Optional[Path] = None) -> Dict[str, Any]:
    """Run the soak; each sample is also appended to ``samples_path`` (JSON lines) as it is taken, so a
    run cut short still leaves its curve."""
    seconds = 60.0 * (minutes if minutes else QUICK_MINUTES if quick else FULL_MINUTES)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ini = work / "ocap.ini"
        ini.write_text(soak_config(work, rate), encoding="utf-8")
        with start_ocapd(ini, work / "ocap.sock", work / "ocapd.log") as daemon:
            sock = daemon.socket
            stop = threading.Event()
            answered = [0, 0]                      # ok, failed

            def client() -> None:
                import numpy as np

                from ocap_core.data import load_dataset

                x = load_dataset("fashion-mnist", "test").x[:500]
                c = Client(sock)
                i = 0
                while not stop.wait(0.1):
                    try:
                        c.predict(np.asarray(x[i % len(x)]))
                        answered[0] += 1
                    except (ServiceError, OSError):
                        answered[1] += 1
                        c.close()
                        c = Client(sock)
                    i += 1
                c.close()

            t = threading.Thread(target=client, daemon=True)
            t.start()
            p = psutil.Process(daemon.pid)
            samples: List[Dict[str, float]] = []
            t0 = time.time()
            out = samples_path.open("w", encoding="utf-8") if samples_path else None
            try:
                while time.time() - t0 < seconds:
                    time.sleep(5.0)                 # the sampling period, not a wait for something to happen
                    s = {"t": time.time() - t0, "ts": time.time(), "rss": p.memory_info().rss, "fds": p.num_fds(),
                         "threads": p.num_threads(),
                         "db": sum(f.stat().st_size for f in (work / "state").glob("ocap.db*")),
                         "cache": _dir_bytes(work / "cache")}
                    samples.append(s)
                    if out:
                        out.write(json.dumps(s) + "\n")
                        out.flush()
            finally:
                if out:
                    out.close()
            stop.set()
            t.join(timeout=30)
            events = daemon.events(limit=10000)
    kinds = [e["kind"] for e in events]
    return {"seconds": seconds, "rate": rate, "samples": samples, "answered": answered[0], "failed": answered[1],
            "per_cycle": per_cycle(samples, [e["ts"] for e in events if e["kind"] == Event.GATE]),
            "cycles": {k: kinds.count(k) for k in (Event.PERSONALIZE_STARTED, Event.GATE, Event.DEPLOY, Event.PROBATION_PASSED,
                                                   Event.DRIFT, Event.REVERT, Event.ROLLBACK, Event.PERSONALIZE_FAILED)}}


def per_cycle(samples: Sequence[Dict[str, float]], gates: Sequence[float]) -> List[Dict[str, float]]:
    """The first sample after each gate (the same point of every cycle: its trim has just run)."""
    out, i = [], 0
    for g in sorted(gates):
        while i < len(samples) and samples[i]["ts"] < g:
            i += 1
        if i < len(samples) and (not out or out[-1] is not samples[i]):
            out.append(samples[i])
    return out


def second_half_growth(points: Sequence[Dict[str, float]], span: float) -> Optional[Dict[str, float]]:
    """Growth of the per-cycle RSS over the second half of a run of ``span`` seconds: the median of the
    last 5 points against the median of the 5 points after the half; and the least-squares slope over the
    second half, in MB per hour. None with fewer than 10 points in that half."""
    half = [p for p in points if p["t"] >= span / 2]
    if len(half) < 10:
        return None

    first, last = statistics.median(p["rss"] for p in half[:5]), statistics.median(p["rss"] for p in half[-5:])
    ts, rs = [p["t"] for p in half], [p["rss"] for p in half]
    mt, mr = sum(ts) / len(ts), sum(rs) / len(rs)
    slope = sum((a - mt) * (b - mr) for a, b in zip(ts, rs)) / max(sum((a - mt) ** 2 for a in ts), 1e-9)
    return {"from": first, "to": last, "growth": last / first - 1, "mb_per_hour": slope * 3600 / 2 ** 20,
            "points": len(half)}


def svg(res: Dict[str, Any], width: int = 720, height: int = 260) -> str:
    """RSS over time (every sample, and the per-cycle points) as a small SVG, no plotting library."""
    s, pc = res["samples"], res["per_cycle"]
    if not s:
        return ""
    t_max = max(x["t"] for x in s)
    mb = [x["rss"] / 2 ** 20 for x in s]
    lo, hi = min(mb) * 0.95, max(mb) * 1.05
    L, R, T, B = 50, 10, 20, 30

    def xy(x: Dict[str, float]) -> Tuple[str, str]:
        return (f"{L + (width - L - R) * x['t'] / max(t_max, 1e-9):.1f}",
                f"{T + (height - T - B) * (1 - (x['rss'] / 2 ** 20 - lo) / max(hi - lo, 1e-9)):.1f}")

    line = " ".join(",".join(xy(x)) for x in s)
    dots = "".join('<circle cx="{}" cy="{}" r="2" fill="#c0392b"/>'.format(*xy(x)) for x in pc)
    ticks = "".join(f'<text x="{L - 4}" y="{T + (height - T - B) * (1 - f):.0f}" text-anchor="end" '
                    f'font-size="10">{lo + f * (hi - lo):.0f}</text>' for f in (0, 0.5, 1))
    hours = "".join(f'<text x="{L + (width - L - R) * f:.0f}" y="{height - 12}" text-anchor="middle" '
                    f'font-size="10">{f * t_max / 60:.0f} min</text>' for f in (0, 0.25, 0.5, 0.75, 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="{L}" y="13" font-size="11">RSS of ocapd (MB) over the soak; red: the first sample after '
            f'each gate</text>{ticks}{hours}'
            f'<polyline points="{line}" fill="none" stroke="#2c3e50" stroke-width="1"/>{dots}</svg>\n')


def markdown(res: Dict[str, Any], machine: str, quick: bool, plot: str = "") -> str:
    s = res["samples"]
    w = next((x for x in s if x["t"] >= 30), s[0])
    e = s[-1]
    fds = [x["fds"] for x in s]
    peak = max(x["rss"] for x in s)
    g = second_half_growth(res["per_cycle"], res["seconds"])
    if g is None:
        per = (f"| RSS after each gate, second half | missing: {len(res['per_cycle'])} gates in all, fewer than "
               f"10 in the second half | ≤ +{100 * GROWTH_TARGET:.0f} % | {'—' if quick else 'MISSED'} |")
    else:
        per = (f"| RSS after each gate, second half ({g['points']} gates; median of 5 first → 5 last) | "
               f"{g['from'] / 2 ** 20:.1f} → {g['to'] / 2 ** 20:.1f} MB ({100 * g['growth']:+.2f} %; slope "
               f"{g['mb_per_hour']:+.2f} MB/h) | ≤ +{100 * GROWTH_TARGET:.0f} % | "
               f"{'MET' if g['growth'] <= GROWTH_TARGET else 'MISSED'} |")
    lines = ["## Soak (`ocap bench soak`)", "",
             run_stamp(machine, quick)
             + f". `ocapd` on fmnist-cnn replaying test images at {res['rate']:g} frames/s for {res['seconds'] / 60:.0f} "
             f"min, mix `{MIX}` repeating; one socket client at 10 requests/s. Short cycles: windows of 2 s, the fixed "
             "OCAP rule with 3 epochs, a 3 pp budget, 5 s cooldowns after a run and after a revert (ocapd's memory is "
             "measured, not the pruning). "
             "Events: " + ", ".join(f"{k} {v}" for k, v in res["cycles"].items()) + ".", ""]
    if plot:
        lines += [f"![RSS of ocapd over the soak]({plot})", ""]
    lines += ["| figure | after 30 s | end | target | verdict |", "|---|---|---|---|---|",
              f"| RSS of ocapd (every 5 s) | {w['rss'] / 2 ** 20:.1f} MB | {e['rss'] / 2 ** 20:.1f} MB "
              f"({100 * (e['rss'] / w['rss'] - 1):+.1f} %), max {peak / 2 ** 20:.1f} MB | | |",
              per,
              f"| open file descriptors | {w['fds']} | {e['fds']} (min {min(fds)}, max {max(fds)}) | steady | "
              f"{'MET' if e['fds'] <= w['fds'] + 5 else 'MISSED'} |",
              f"| threads | {w['threads']} | {e['threads']} | | |",
              f"| database (with WAL) | {w['db'] / 2 ** 10:.0f} KiB | {e['db'] / 2 ** 10:.0f} KiB | | |",
              f"| sample cache | {w['cache'] / 2 ** 10:.0f} KiB | {e['cache'] / 2 ** 10:.0f} KiB | | |",
              f"| socket client requests | | {res['answered']} answered, {res['failed']} failed | 0 failed | "
              f"{'MET' if res['failed'] == 0 else 'MISSED'} |"]
    return "\n".join(lines)
