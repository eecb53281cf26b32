"""``python -m daemon.worker JOB.json``: one personalization in its own process (the only part of the
daemon that imports torch, so that its memory goes back to the system when it exits and a crash in it
never touches serving).

The job names the base package, a samples file (``.npz`` with ``x`` uint8 images and ``is_val``), the
observed classes and the engine's settings; the candidate package goes to ``out``. Progress goes to
stdout as JSON lines (``started``, ``stage``, ``search_level``, ``finetune_epoch``, then ``done`` or ``failed``), which
the daemon reads into ``status`` and ``events``; ``started`` reports the torch threads the worker chose
(one per idle core, within the job's ``threads`` cap; ``daemon/cores.py``). Exit 0 when a candidate
was written, 1 when not (no partial candidate is left behind), 2 for a bad job file."""

import json
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ocap_core import strict_json
from service import faults

from .cores import PASSIVE_OPENMP, THREAD_VARS, measure_idle_cores, worker_threads

EXIT_OK, EXIT_FAILED, EXIT_BAD_JOB = 0, 1, 2
REQUIRED = ("base", "samples", "classes", "out")


def emit(event: str, **fields: Any) -> None:
    """One progress line on stdout (the daemon's pipe)."""
    sys.stdout.write(strict_json.dumps(dict(fields, event=event, t=round(time.time(), 3)), default=str) + "\n")
    sys.stdout.flush()


def read_job(path: Path) -> Dict[str, Any]:
    try:
        job = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"job file {path}: {e}") from e
    if not isinstance(job, dict):
        raise ValueError(f"job file {path}: a JSON object expected")
    missing = [k for k in REQUIRED if k not in job]
    if missing:
        raise ValueError(f"job file {path}: missing {', '.join(missing)}")
    return job


def job_threads(job: Dict[str, Any], path: Path) -> int:
    """The job's thread cap: ``threads`` an integer >= 1, or 0, "auto" or absent for no cap (one thread
    per idle core)."""
    value = job.get("threads", 0)
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"job file {path}: threads = {value!r}: expected 'auto' or an integer >= 0 (0: auto)")
    return value


def quiet_threads(threads: int) -> None:
    """Before torch is imported (its OpenMP runtime reads these once, when it loads): ``threads``
    threads that wait passively instead of spinning while one of them is descheduled."""
    os.environ.update(PASSIVE_OPENMP)
    os.environ.update({v: str(threads) for v in THREAD_VARS})


def _progress(ev: Dict[str, Any]) -> None:
    if ev.get("event") == "stage":          # the process's peak memory so far (Linux: KiB)
        ev = dict(ev, peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    emit(**ev)
    if ev.get("event") == "stage":
        faults.point(f"worker.{ev['stage']}")          # after each stage (test-only, via OCAP_FAULTS)


def run(job: Dict[str, Any]) -> Dict[str, Any]:
    """Personalize as the job says; returns the candidate's summary."""
    import numpy as np

    from ocap_core.finetune import FinetuneSpec
    from ocap_core.package import open_package
    from ocap_core.personalize import personalize
    from ocap_core.personalize_samples import Samples
    from ocap_core.prune_spec import PruneSpec
    from ocap_core.search_spec import DEFAULT_MAX_LOSS, DEFAULT_TIME_BUDGET, MIN_PER_CLASS, SearchSpec

    with np.load(job["samples"]) as z:
        samples = Samples(x=z["x"], is_val=z["is_val"].astype(bool))
    emit("samples", train=int((~samples.is_val).sum()), val=int(samples.is_val.sum()))
    rule = job.get("rule", "search")
    budget = float(job.get("time_budget", DEFAULT_TIME_BUDGET))
    ft = FinetuneSpec(epochs=int(job.get("epochs", 30)), time_budget=0.0 if rule == "search" else budget,
                      seed=int(job.get("seed", 0)))
    search = SearchSpec(max_loss=float(job.get("max_loss", DEFAULT_MAX_LOSS)), time_budget=budget)
    spec = PruneSpec(scorer=job.get("scorer", "ocap"), rule=rule, search=search, finetune=ft,
                     min_per_class=int(job.get("min_per_class", MIN_PER_CLASS)),
                     threads=int(job.get("threads", 1)), seed=int(job.get("seed", 0)))
    freqs = {int(k): float(v) for k, v in (job.get("class_freqs") or {}).items()}
    res = personalize(open_package(job["base"]), samples, [int(k) for k in job["classes"]], spec, Path(job["out"]),
                      class_freqs=freqs or None, name=job.get("name"), progress=_progress)
    card = res.package.card
    return {"candidate": str(res.package.path), "version": card.version, "class_ids": card.class_ids,
            "metrics": {k: card.metrics.get(k) for k in ("macs", "params", "mac_reduction", "val_agreement",
                                                         "val_expected_agreement")},
            "search": card.provenance.get("search"), "timings": res.timings}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="worker %(levelname)s %(name)s: %(message)s")
    if len(args) != 1:
        print("usage: python -m daemon.worker JOB.json", file=sys.stderr)
        return EXIT_BAD_JOB
    try:
        job = read_job(Path(args[0]))
        cap = job_threads(job, Path(args[0]))
    except ValueError as e:
        emit("failed", error=str(e))
        return EXIT_BAD_JOB
    idle = measure_idle_cores()
    threads = worker_threads(cap, idle)
    quiet_threads(threads)
    job = dict(job, threads=threads)
    emit("started", pid=os.getpid(), classes=job["classes"], threads=threads, idle_cores=idle,
         threads_cap=cap or "auto")
    try:
        summary = run(job)
    except Exception as e:  # any failure of the engine is reported, and no partial candidate stays
        logging.getLogger("daemon.worker").debug("personalization failed", exc_info=True)
        shutil.rmtree(job["out"], ignore_errors=True)
        emit("failed", error=f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    faults.point("worker.before_done")
    emit("done", **summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
