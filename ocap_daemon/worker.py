"""``python -m ocap_daemon.worker JOB.json``: one personalization in its own process (the only part of the
daemon that imports torch, so that its memory goes back to the system when it exits and a crash in it
never touches serving).

The job (``ocap_daemon/job.py``) names the base package, a samples file (``.npz`` with ``x`` uint8 images and
``is_val``), the observed classes and the engine's settings; the candidate package goes to ``out`` (with
``quantize = int8`` also its INT8 child, to ``out-int8``). Progress goes to
stdout as JSON lines (``started``, ``stage``, ``search_level``, ``finetune_epoch``, then ``done`` or ``failed``), which
the daemon reads into ``status`` and ``events``; ``started`` reports the torch threads the worker chose
(one per idle core, within the job's ``threads`` cap; ``ocap_daemon/cores.py``). Exit 0 when a candidate
was written, 1 when not (no partial candidate is left behind), 2 for a bad job file."""

import dataclasses
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ocap_core import strict_json
from ocap_service import faults

from .cores import PASSIVE_OPENMP, THREAD_VARS, measure_idle_cores, worker_threads
from .errors import DaemonError
from .job import Job, read_samples

EXIT_OK, EXIT_FAILED, EXIT_BAD_JOB = 0, 1, 2


def emit(event: str, **fields: Any) -> None:
    """One progress line on stdout (the daemon's pipe)."""
    sys.stdout.write(strict_json.dumps(dict(fields, event=event, t=round(time.time(), 3)), default=str) + "\n")
    sys.stdout.flush()


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


def run(job: Job) -> Dict[str, Any]:
    """Personalize as the job says; returns the candidate's summary."""
    from ocap_core.package import open_package
    from ocap_core.personalize import personalize
    from ocap_core.personalize_samples import Samples

    x, is_val = read_samples(job.samples)
    samples = Samples(x=x, is_val=is_val)
    emit("samples", train=int((~samples.is_val).sum()), val=int(samples.is_val.sum()))
    res = personalize(open_package(job.base), samples, list(job.classes), job.prune_spec(), Path(job.out),
                      class_freqs=dict(job.class_freqs) or None, name=job.name, progress=_progress)
    card = res.package.card
    summary = {"candidate": str(res.package.path), "version": card.version, "class_ids": card.class_ids,
               "metrics": {k: card.metrics.get(k) for k in ("macs", "params", "mac_reduction", "val_agreement",
                                                            "val_expected_agreement")},
               "search": card.provenance.get("search"), "timings": res.timings}
    if job.quantize == "int8":
        summary.update(quantize(res.package, x[~samples.is_val], job))
    return summary


def quantize(candidate, frames, job: Job) -> Dict[str, Any]:
    """The candidate's INT8 child, calibrated on the cached training frames of the observed classes
    (they never leave the device), as ``{"int8": summary}``; a failure is reported as ``{"int8_error":
    why}`` and the FP32 candidate goes on alone. Not on the held-back frames: the gate judges the child's
    agreement on those, and ranges fitted to the frames it is judged on would flatter it."""
    from ocap_core.errors import OcapError
    from ocap_core.quantize import quantize_package

    t0 = time.perf_counter()
    try:
        child = quantize_package(candidate, frames, Path(job.int8_out), classes=job.classes,
                                 source="cached training frames of the observed classes")
    except Exception as e:  # optional: whatever goes wrong, the FP32 candidate is still a result
        why = str(e) if isinstance(e, OcapError) else f"{type(e).__name__}: {e}"
        emit("int8_failed", error=why)
        return {"int8_error": why}
    _progress({"event": "stage", "stage": "quantize", "seconds": round(time.perf_counter() - t0, 3)})
    q = child.card.provenance["quantization"]
    return {"int8": {"candidate": str(child.path), "version": child.card.version,
                     "calibration": q["calibration"]["frames"],
                     "metrics": {k: child.card.metrics.get(k) for k in ("onnx_bytes", "size_reduction",
                                                                        "calibration_agreement")}}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="worker %(levelname)s %(name)s: %(message)s")
    if len(args) != 1:
        print("usage: python -m ocap_daemon.worker JOB.json", file=sys.stderr)
        return EXIT_BAD_JOB
    try:
        job = Job.read(Path(args[0]))
    except DaemonError as e:
        emit("failed", error=str(e))
        return EXIT_BAD_JOB
    cap = job.threads
    idle = measure_idle_cores()
    threads = worker_threads(cap, idle)
    quiet_threads(threads)
    job = dataclasses.replace(job, threads=threads)
    emit("started", pid=os.getpid(), classes=list(job.classes), threads=threads, idle_cores=idle,
         threads_cap=cap or "auto")
    try:
        summary = run(job)
    except Exception as e:  # any failure of the engine is reported, and no partial candidate stays
        logging.getLogger("ocap_daemon.worker").debug("personalization failed", exc_info=True)
        shutil.rmtree(job.out, ignore_errors=True)
        shutil.rmtree(job.int8_out, ignore_errors=True)
        emit("failed", error=f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    faults.point("worker.before_done")
    emit("done", **summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
