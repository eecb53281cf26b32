"""How many CPU threads the personalization worker uses, and how its OpenMP threads wait.

Measured (ALGORITHMS.md §11): 2 torch threads at nice 19 on a busy 2-core box took ~110 s per
fine-tuning epoch, 1 thread 3–9 s. An OpenMP team is as fast as its slowest thread: when the scheduler
parks one thread behind the busy processes, the others spin at every barrier waiting for it. So the
worker takes one thread per *idle* core (never more than are free, at least one, at most the
configured cap) and its OpenMP runtime waits passively. The choice is a pure function of measured
per-CPU load (``idle_cores``, ``worker_threads``); ``measure_idle_cores`` is the thin I/O around it.
Torch-free: the worker decides before it imports torch, whose OpenMP runtime reads its environment
once, when it loads.
"""

import logging
import os
import time
from typing import Dict, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

IDLE_SHARE = 0.8        # a core counts as idle when at least this share of it is free
SAMPLE_S = 0.5          # how long the per-CPU load is sampled at worker start

# Environment for the worker's OpenMP runtime, set before torch is imported. GNU libgomp (the pip and
# Jetson torch wheels) spins 300,000 times before sleeping unless OMP_WAIT_POLICY=PASSIVE, which makes
# its GOMP_SPINCOUNT 0; LLVM/Intel libomp sleeps at once with PASSIVE unless KMP_BLOCKTIME says
# otherwise, so both are pinned to 0 as well.
PASSIVE_OPENMP: Dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"}
THREAD_VARS: Tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

CpuTimes = Dict[int, Tuple[float, float]]       # CPU id -> (busy ticks, total ticks) since boot


def idle_cores(busy: Sequence[float], load: Optional[float] = None) -> int:
    """Cores free enough for one more compute thread.

    ``busy``: the busy share (0..1) of each CPU this process may run on, over a recent sample.
    ``load``: optionally the 1-minute load average (runnable tasks), a floor on how many of those
    cores count as taken: a short sample can fall into a pause of a bursty load."""
    used = sum(min(max(float(b), 0.0), 1.0) for b in busy)
    if load is not None:
        used = max(used, min(max(float(load), 0.0), float(len(busy))))
    return max(0, int(len(busy) - used + (1.0 - IDLE_SHARE) + 1e-9))


def worker_threads(requested: int, idle: int) -> int:
    """The worker's thread count: one per idle core, at least 1, at most ``requested`` (0: no cap, auto)."""
    n = max(1, int(idle))
    return min(n, int(requested)) if requested > 0 else n


def parse_proc_stat(text: str) -> CpuTimes:
    """``/proc/stat`` text -> {cpu id: (busy ticks, total ticks)}; idle and iowait count as not busy."""
    out: CpuTimes = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        ticks = [float(v) for v in rest.split()]
        total = sum(ticks[:8])              # user nice system idle iowait irq softirq steal (guest is in user)
        out[int(name[3:])] = (total - sum(ticks[3:5]), total)
    return out


def busy_shares(before: CpuTimes, after: CpuTimes, cpus: Sequence[int]) -> Tuple[float, ...]:
    """Busy share of each of ``cpus`` between two ``parse_proc_stat`` readings (a CPU without ticks, e.g.
    one that went offline, counts as busy: it cannot take a thread)."""
    shares = []
    for c in cpus:
        (b0, t0), (b1, t1) = before.get(c, (0.0, 0.0)), after.get(c, (0.0, 0.0))
        shares.append((b1 - b0) / (t1 - t0) if t1 > t0 else 1.0)
    return tuple(shares)


def usable_cpus() -> Tuple[int, ...]:
    """The CPU ids this process may run on (its affinity), else 0..cpu_count-1."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def measure_idle_cores(sample_s: float = SAMPLE_S, stat_path: str = "/proc/stat") -> int:
    """Idle usable cores now: per-CPU load from ``/proc/stat`` over ``sample_s`` seconds with the 1-minute
    load average as a floor; the load average alone where ``/proc/stat`` cannot be read."""
    cpus = usable_cpus()
    try:
        load: Optional[float] = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    try:
        with open(stat_path, encoding="ascii") as f:
            before = parse_proc_stat(f.read())
        time.sleep(sample_s)
        with open(stat_path, encoding="ascii") as f:
            after = parse_proc_stat(f.read())
    except (OSError, ValueError) as e:
        log.info("cannot sample per-CPU load from %s (%s); using the load average", stat_path, e)
        return idle_cores([0.0] * len(cpus), load if load is not None else float(len(cpus)))
    return idle_cores(busy_shares(before, after, cpus), load)
