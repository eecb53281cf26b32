"""Load while the daemon changes its model (``ocap bench load``): ``ocapd`` on fmnist-cnn with 16 client
processes sending a skewed class mix at a steady rate for the whole run, while it personalizes (the
worker runs beside serving), swaps the pruned model in, and, once the mix drifts, swaps back: two swaps.
Latency p50/p99 when idle vs while the worker runs vs around the swaps; failed requests (target 0)."""

import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ocap_core.data import load_dataset
from ocap_daemon.demo import demo_config
from ocap_daemon.launch import start_ocapd, wait_until
from ocap_service.client import Client, Unreachable
from ocap_service.event_kinds import Event

from .pool import spawn_pool
from .report import figure, run_stamp

MIX = {0: 0.5, 3: 0.3, 7: 0.2}
DRIFT = {0: 0.5, 3: 0.3, 7: 0.2, 9: 0.35}


def paced_client(sock: str, images: Dict[int, np.ndarray], rate: float, start_at: float, stop_at: float,
                 drift_flag: str, seed: int) -> List[Tuple[float, float, bool]]:
    """One client process: ``rate`` predictions per second of the mix (the drift mix once the flag file
    exists) until ``stop_at``; (wall time, latency ms, answered) per request."""
    rng = np.random.default_rng(seed)
    time.sleep(max(0.0, start_at - time.time()))
    out: List[Tuple[float, float, bool]] = []
    client = Client(Path(sock))
    nxt, n = time.monotonic(), 0
    mix = MIX
    while time.time() < stop_at:
        if n % 50 == 0 and mix is MIX and Path(drift_flag).exists():
            mix = DRIFT
        keys = list(mix)
        p = np.asarray([mix[k] for k in keys])
        k = int(rng.choice(keys, p=p / p.sum()))
        img = images[k][int(rng.integers(len(images[k])))]
        t0, p0 = time.time(), time.perf_counter()
        try:
            client.predict(img)
            ok = True
        except Exception:          # counted as failed; reconnect
            ok = False
            client.close()
            try:
                client = Client(Path(sock))
            except Unreachable:
                pass
        out.append((t0, (time.perf_counter() - p0) * 1e3, ok))
        n += 1
        nxt += 1.0 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))
    client.close()
    return out


def _pct(ms: List[float]) -> Dict[str, float]:
    if not ms:
        return {"n": 0, "p50": float("nan"), "p99": float("nan")}
    a = np.asarray(ms)
    return {"n": len(ms), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def run(quick: bool = False, clients: int = 16, rate: float = 20.0) -> Dict[str, Any]:
    seconds = 30.0 if quick else 180.0
    test = load_dataset("fashion-mnist", "test")
    images = {k: test.x[test.y == k][:300] for k in range(10)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ini = work / "ocap.ini"
        ini.write_text(demo_config(work, "fmnist-cnn", rate * clients, threads=1), encoding="utf-8")
        flag = work / "drift"
        with start_ocapd(ini, work / "ocap.sock", work / "ocapd.log") as daemon:
            with spawn_pool(clients) as pool:
                start = time.time() + 3.0 + 0.2 * clients
                futs = [pool.submit(paced_client, str(daemon.socket), images, rate, start, start + seconds, str(flag), s)
                        for s in range(clients)]

                def clients_done() -> bool:
                    if not flag.exists() and any(e["kind"] == Event.PROBATION_PASSED for e in daemon.events()):
                        flag.write_text("drift")
                    return all(f.done() for f in futs)

                wait_until(clients_done, seconds + 600.0, f"{clients} load clients to finish", interval=1.0)
                reqs = [r for f in futs for r in f.result()]
            events = daemon.events()
    return summarize(reqs, events, clients, rate, seconds)


def summarize(reqs, events, clients, rate, seconds) -> Dict[str, Any]:
    first = {k: min((e["ts"] for e in events if e["kind"] == k), default=None)
             for k in (Event.PERSONALIZE_STARTED, Event.PERSONALIZE_FINISHED)}
    swaps = [(e["ts"] - e["detail"].get("seconds", 0.0) - 0.25, e["ts"] + 0.25) for e in events if e["kind"] == Event.SWAP]
    phase = {"idle": [], "worker": [], "swaps": []}
    for t, ms, ok in reqs:
        if not ok:
            continue
        if any(a <= t <= b for a, b in swaps):
            phase["swaps"].append(ms)
        elif first["personalize_started"] and first["personalize_started"] <= t <= (first["personalize_finished"] or 1e18):
            phase["worker"].append(ms)
        elif first["personalize_started"] is None or t < first["personalize_started"]:
            phase["idle"].append(ms)
    kinds = [e["kind"] for e in events]
    return {"clients": clients, "rate": rate, "seconds": seconds, "requests": len(reqs),
            "failed": sum(1 for r in reqs if not r[2]), "swaps": len(swaps), "events": kinds,
            "phases": {k: _pct(v) for k, v in phase.items()},
            "worker_s": (first["personalize_finished"] or 0) - (first["personalize_started"] or 0)}


def markdown(res: Dict[str, Any], machine: str, quick: bool) -> str:
    ph = res["phases"]
    idle = ph["idle"]["p99"]
    lines = ["## Load while the model changes (`ocap bench load`)", "",
             run_stamp(machine, quick)
             + f". `ocapd` on fmnist-cnn, {res['clients']} client processes at {res['rate']:g} requests/s each for "
             f"{res['seconds']:.0f} s (skewed 3-class mix, then a fourth class); the daemon personalized in a worker "
             f"({res['worker_s']:.0f} s), swapped the pruned model in and, on drift, back ({res['swaps']} swaps).", "",
             "| phase | requests | p50 ms | p99 ms | p99 ÷ idle |", "|---|---|---|---|---|"]
    for k, label in (("idle", "idle (base model, no worker)"), ("worker", "worker running"),
                     ("swaps", "within 0.25 s of a swap")):
        p = ph[k]
        lines.append(f"| {label} | {p['n']} | {figure(p['p50'])} | {figure(p['p99'])} | "
                     f"{figure(p['p99'] / idle if p['n'] and idle == idle and idle > 0 else None)} |")
    verdict = "MET" if res["failed"] == 0 and res["swaps"] >= 2 else "MISSED"
    lines += ["", f"Failed requests: {res['failed']} of {res['requests']} (target 0, with at least 2 swaps): {verdict}."]
    return "\n".join(lines)
