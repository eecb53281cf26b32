"""A compressed soak (``ocap bench soak``): ``ocapd`` replays Fashion-MNIST test images from its own
replay source at a high rate for a long time, the mix cycling so that several personalize -> deploy ->
drift -> revert cycles happen, while one paced socket client counts failures. Sampled every 5 s: the
daemon's RSS, open file descriptors and threads, and the database size. Target: RSS growth ≤ 5 %
from the first sample after warm-up to the end; descriptors steady; 0 failed requests."""

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import psutil

from daemon.demo import demo_config
from daemon.launch import start_ocapd
from service.client import Client, ServiceError

# 3 classes, then a fourth joins (drift), then 3 again (a new stable set inside the served one)
MIX = "0:0.5,3:0.3,7:0.2@60s; 0:0.4,3:0.25,7:0.15,9:0.2@60s"


def run(quick: bool = False, rate: float = 300.0) -> Dict[str, Any]:
    seconds = 120.0 if quick else 1800.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ini = work / "ocap.ini"
        text = demo_config(work, "fmnist-cnn", rate, threads=1).replace("cooldown = 60s", "cooldown = 20s")
        text = text.replace("cooldown = 20s\n", "cooldown = 20s\ndaily_cap = 1000\n", 1)   # cycles all along
        ini.write_text(text + f"\n[source:replay]\ntype = replay\nrate = {rate:g}\nmix = {MIX}\n", encoding="utf-8")
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
            while time.time() - t0 < seconds:
                time.sleep(5.0)                 # the sampling period, not a wait for something to happen
                samples.append({"t": time.time() - t0, "rss": p.memory_info().rss, "fds": p.num_fds(),
                                "threads": p.num_threads(), "db": sum(f.stat().st_size for f in
                                                                       (work / "state").glob("ocap.db*"))})
            stop.set()
            t.join(timeout=30)
            events = daemon.events()
    kinds = [e["kind"] for e in events]
    warm = next((s for s in samples if s["t"] >= 30), samples[0])
    return {"seconds": seconds, "rate": rate, "samples": samples, "warm": warm, "end": samples[-1],
            "answered": answered[0], "failed": answered[1],
            "cycles": {k: kinds.count(k) for k in ("personalize_started", "deploy", "probation_passed", "drift",
                                                   "rollback", "personalize_failed")}}


def markdown(res: Dict[str, Any], machine: str, quick: bool) -> str:
    w, e = res["warm"], res["end"]
    growth = e["rss"] / w["rss"] - 1
    fds = [s["fds"] for s in res["samples"]]
    lines = ["## Soak (`ocap bench soak`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}" + (" (quick mode)" if quick else "")
             + f". `ocapd` on fmnist-cnn replaying test images at {res['rate']:g} frames/s for {res['seconds'] / 60:.0f} "
             f"min, mix `{MIX}` repeating; one socket client at 10 requests/s. Cycles: "
             + ", ".join(f"{k} {v}" for k, v in res["cycles"].items()) + ".", "",
             "| figure | after 30 s | end | target | verdict |", "|---|---|---|---|---|",
             f"| RSS of ocapd | {w['rss'] / 2 ** 20:.1f} MB | {e['rss'] / 2 ** 20:.1f} MB ({100 * growth:+.1f} %) | ≤ +5 % | "
             f"{'MET' if growth <= 0.05 else 'MISSED'} |",
             f"| open file descriptors | {w['fds']} | {e['fds']} (min {min(fds)}, max {max(fds)}) | steady | "
             f"{'MET' if e['fds'] <= w['fds'] + 5 else 'MISSED'} |",
             f"| threads | {w['threads']} | {e['threads']} | | |",
             f"| database (with WAL) | {w['db'] / 2 ** 10:.0f} KiB | {e['db'] / 2 ** 10:.0f} KiB | | |",
             f"| socket client requests | | {res['answered']} answered, {res['failed']} failed | 0 failed | "
             f"{'MET' if res['failed'] == 0 else 'MISSED'} |"]
    return "\n".join(lines)
