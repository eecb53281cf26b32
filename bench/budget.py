"""The personalization budget on a busy machine (``ocap bench budget``): the same operating-point search
(``ocap prune`` on fmnist-cnn, one thread, passive OpenMP waits, as the worker runs on a busy 2-core
machine) with the machine idle and with one process per core busy half of every 20 ms at nice 0
(``bench.threads``' ``busy`` load: a serving plane and other work taking a core back all the time).

The search's work is a budget of epochs, its time only a cap (``SearchSpec.work_epochs``), so the loaded
search is the same search done later: the same epochs, levels and model (one thread in both, so the
same arithmetic); only its wall time grows. With a wall-clock budget it trained about half as many
epochs (the run of 2026-11-30 by hand, in the section's notes). ``--no-cascade``: a cascade is chosen by
measured latency, which the load changes; the loop benchmark runs the search as the daemon does."""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from .report import run_stamp, targets_table
from .threads import ROOT, _child_env, _start_hogs, _stop

MODEL, CLASSES = "fmnist-cnn", "0,2,6"
LOADS = ("idle", "busy")
CAP_S = 600.0                # the time cap: a safety net, not the budget


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(load: str, budget: int, nice: int, seed: int = 0, root: Path = ROOT, max_loss: float = 1.0
            ) -> Dict[str, Any]:
    """One search under ``load``: its wall and CPU seconds and what its card says it did. ``root``: the
    checkout whose ``ocap`` runs (another commit's, to compare by hand)."""
    hogs = _start_hogs(load)
    try:
        time.sleep(1.0 if hogs else 0.0)
        before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="ocap-budget-") as tmp:
            cmd = [sys.executable, "-m", "ocap_cli", "prune", "--model", MODEL, "--classes", CLASSES,
                   "--out", str(Path(tmp) / "pkg"), "--threads", "1", "--work-epochs", str(budget),
                   "--time-budget", f"{CAP_S:g}", "--max-loss", f"{max_loss:g}", "--no-cascade",
                   "--seed", str(seed), "--quiet", "--json"]
            cpu0, t0 = _children_cpu(), time.perf_counter()
            r = subprocess.run(cmd, env=dict(_child_env(1, True), PYTHONPATH=str(root)), preexec_fn=lambda: os.nice(nice),
                               capture_output=True, text=True, cwd=str(root), timeout=CAP_S * 4 + 900)
            wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0      # before the hogs are reaped
    finally:
        _stop(hogs)
    if r.returncode != 0:
        raise RuntimeError(f"budget: ocap prune under load {load!r} failed: {r.stderr[-2000:]}")
    s = json.loads(r.stdout)
    path = s["search"]["path"]
    polish = s["search"].get("polish") or {}
    return {"load": load, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "loadavg": round(before, 2),
            "levels": [row["level"] for row in path], "accepted": [bool(row["accepted"]) for row in path],
            "epochs": sum(row["epochs"] for row in path) + int(polish.get("epochs") or 0),
            "mac_reduction": s["mac_reduction"], "val_agreement": s["val_agreement"],
            "stopped": s["search"]["stopped"]}


def run(quick: bool = False, seed: int = 0) -> Dict[str, Any]:
    """The search idle, then loaded. Quick (the test suite's): 24 epochs within 2 points at nice 0 (a
    nice-19 search beside a loaded CI machine's busy cores would wait far longer than the test can);
    full: the search's default work within 1 point at nice 19, as ocapd runs its worker."""
    from ocap_core.search_spec import DEFAULT_WORK_EPOCHS

    budget, nice, max_loss = (24, 0, 2.0) if quick else (DEFAULT_WORK_EPOCHS, 19, 1.0)
    rows = [run_one(load, budget, nice, seed, max_loss=max_loss) for load in LOADS]
    return {"rows": rows, "budget": budget, "nice": nice, "quick": quick, "seed": seed, "max_loss": max_loss}


def judge(res: Dict[str, Any]) -> List[List[str]]:
    """(target, measured, MET / MISSED): the loaded search is the idle one, done later."""
    by = {r["load"]: r for r in res["rows"]}
    if "idle" not in by or "busy" not in by or not by["idle"]["epochs"]:
        return []
    idle, busy = by["idle"], by["busy"]
    same = all(idle[k] == busy[k] for k in ("epochs", "levels", "accepted", "mac_reduction", "val_agreement"))
    return [["busy: the same search (epochs, levels, verdicts, MACs, held-back agreement) as idle",
             f"{busy['epochs']} vs {idle['epochs']} epochs, {busy['mac_reduction']:.2f}× vs {idle['mac_reduction']:.2f}×, "
             f"in {busy['wall_s'] / idle['wall_s']:.2f}× the wall time", "MET" if same else "MISSED"]]


def markdown(res: Dict[str, Any], machine: str) -> str:
    lines = [f"## The budget on a busy machine (`ocap bench budget{' --quick' if res['quick'] else ''}`)", "",
             run_stamp(machine, res["quick"]) + f". `ocap prune --model {MODEL} --classes {CLASSES} "
             f"--threads 1 --work-epochs {res['budget']} --time-budget {CAP_S:g} --max-loss "
             f"{res.get('max_loss', 1.0):g} --no-cascade --seed {res['seed']}` at nice {res['nice']} with passive "
             "OpenMP waits, the machine idle (whatever else runs shows in the load average) and then busy (one "
             "process per core busy 10 ms of every 20 ms at nice 0). The search's work is epochs, its time a cap, "
             "so waiting for a core should delay the search, not change it.", "",
             "| load | wall s | CPU s | levels tried (✗ over the loss budget) | fine-tuning epochs | MACs ÷ | "
             "held-back agreement | stopped | 1-min load avg before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        levels = " → ".join(f"{lv:g}{'' if ok else '✗'}" for lv, ok in zip(r["levels"], r["accepted"]))
        lines.append(f"| {r['load']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {levels} | {r['epochs']} | "
                     f"{r['mac_reduction']:.2f}× | {r['val_agreement']:.4f} | {r['stopped']} | {r['loadavg']:.2f} |")
    return "\n".join(lines + targets_table(judge(res)))
