"""The personalization worker as the daemon runs it: a real ``python -m daemon.worker`` subprocess at
low priority, progress as JSON lines, pause/resume by signals, kill, failures without partial output."""

import os
import time

import numpy as np
import psutil
import pytest

from daemon.supervisor import WorkerRun
from ocap_core.data import load_dataset
from ocap_core.package import open_package, resolve_model

pytestmark = pytest.mark.torch


def _job(tmp_path, classes=(1, 8), per_class=96, epochs=2, time_budget=15):
    train = load_dataset("fashion-mnist", "train")
    idx = np.concatenate([np.flatnonzero(train.y == k)[:per_class] for k in classes])
    is_val = np.arange(len(idx)) % 3 == 0          # 64 held back: 32 judged can show 5 points, not 1
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=train.x[idx], is_val=is_val)
    return {"base": str(resolve_model("fmnist-cnn")), "samples": str(samples), "classes": list(classes),
            "out": str(tmp_path / "job" / "candidate"), "epochs": epochs, "threads": 1, "time_budget": time_budget,
            "max_loss": 5}


def _wait(run, timeout=300):
    deadline = time.time() + timeout
    while run.poll() is None:
        assert time.time() < deadline, run.describe()
        time.sleep(0.1)
    return run.state


def test_a_job_makes_a_candidate_and_reports_progress(tmp_path):
    seen = []
    run = WorkerRun(_job(tmp_path), tmp_path / "job", nice=19, threads=1, on_event=seen.append)
    assert psutil.Process(run.proc.pid).nice() == 19
    assert _wait(run) == "done", run.reason
    pkg = open_package(run.result["candidate"])
    assert pkg.card.class_ids == [1, 8] and run.result["metrics"]["mac_reduction"] > 1
    events = [e["event"] for e in seen]
    assert events[0] == "started" and "search_level" in events and events[-1] == "done"
    assert seen[0]["threads"] == 1 and seen[0]["threads_cap"] == 1 and run.describe()["threads"] == 1
    assert {e["stage"] for e in seen if e["event"] == "stage"} >= {"load", "score", "select", "search", "export"}
    # the operating point the search chose is the candidate, and its path is in the result
    path = run.result["search"]["path"]
    assert path and run.result["metrics"]["mac_reduction"] >= max(p["level"] for p in path if p["accepted"])
    assert oct(os.stat(tmp_path / "job" / "job.json").st_mode & 0o777) == "0o600"


def test_pause_resume_and_kill(tmp_path):
    run = WorkerRun(_job(tmp_path, epochs=30), tmp_path / "job", threads=1)
    time.sleep(1.0)
    assert run.pause("too hot")
    deadline = time.time() + 5                 # the kernel marks it stopped a moment after the signal
    while psutil.Process(run.proc.pid).status() != psutil.STATUS_STOPPED and time.time() < deadline:
        time.sleep(0.02)
    assert psutil.Process(run.proc.pid).status() == psutil.STATUS_STOPPED
    frozen = run.elapsed
    time.sleep(0.5)
    assert run.elapsed == pytest.approx(frozen, abs=0.05) and run.poll() is None
    assert run.resume() and psutil.Process(run.proc.pid).status() != psutil.STATUS_STOPPED
    run.pause("again")
    run.kill("shutdown")                                   # a stopped worker dies too
    assert run.poll() == "killed" and run.proc.returncode is not None


def test_a_failing_job_leaves_no_candidate(tmp_path):
    job = _job(tmp_path, classes=(1, 8), per_class=1)     # one image per class: the engine refuses
    run = WorkerRun(job, tmp_path / "job", threads=1)
    assert _wait(run) == "failed"
    assert "too few training images of observed classes 1 (Trouser): " in run.reason
    assert not (tmp_path / "job" / "candidate").exists()
    assert not [p for p in (tmp_path / "job").iterdir() if p.name.startswith(".candidate")]


def test_over_budget_is_killed(tmp_path):
    run = WorkerRun(_job(tmp_path, epochs=500), tmp_path / "job", threads=1, budget_s=2.0)
    assert _wait(run) == "killed" and "budget" in run.reason


@pytest.mark.parametrize("cap", [None, 0, "auto", 1])
def test_started_line_reports_the_threads_chosen_from_idle_cores(tmp_path, cap):
    job = dict(_job(tmp_path), samples=str(tmp_path / "absent.npz"))     # fails right after it starts
    if cap is None:
        del job["threads"]
    else:
        job["threads"] = cap
    seen = []
    run = WorkerRun(job, tmp_path / "job", on_event=seen.append)
    env = psutil.Process(run.proc.pid).environ()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["GOMP_SPINCOUNT"] == "0" and "OMP_NUM_THREADS" not in env
    assert _wait(run) == "failed"
    started = seen[0]
    assert started["event"] == "started"
    assert 1 <= started["threads"] <= max(1, started["idle_cores"]) and started["threads"] <= len(os.sched_getaffinity(0))
    assert started["threads_cap"] == (cap or "auto")
    if cap == 1:
        assert started["threads"] == 1


def test_a_bad_threads_field_is_a_bad_job(tmp_path):
    run = WorkerRun(dict(_job(tmp_path), threads="many"), tmp_path / "job")
    assert _wait(run) == "failed" and run.proc.returncode == 2
    assert "threads = 'many'" in run.reason and "auto" in run.reason
