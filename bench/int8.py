"""``ocap bench int8``: FP32 against INT8 (``ocap quantize``: onnxruntime static quantization, QDQ,
per-channel weights, 200 calibration images) on every shipped model and on a pruned candidate of each.

The pruned candidate is what ``ocap prune`` makes for classes 0, 2, 9 (the quality benchmark's timed
subset) with the daemon's defaults, in its own process as the quality benchmark runs it; the quick mode
prunes fmnist-cnn to a fixed 4x with two epochs instead of searching. Each FP32 model and its INT8
child are compared on the test images of the model's classes (``ocap_core.quantize.compare``): accuracy,
top-1 agreement, ONNX size, and batch-1 latency on one onnxruntime thread, the two sessions timed call by
call in turn so that both see the same machine. Target: pruned + INT8 at least 1.3x as fast as the
pruned model alone, within 1 pp of its accuracy, on at least two models."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from . import quality
from .report import figure, run_stamp, targets_table

CLASSES = quality.PRUNE_CLI_CLASSES           # the pruned candidates' classes
CALIBRATION = 200
TARGET_SPEEDUP, TARGET_DROP_PP, TARGET_MODELS = 1.3, 1.0, 2
QUICK = {"models": ["fmnist-cnn"], "latency_runs": 300,
         "prune": ["--target-macs", "4", "--epochs", "2", "--samples-per-class", "64", "--time-budget", "60"]}
FULL = {"models": quality.MODELS, "latency_runs": 2000, "prune": []}


def prune_candidate(model: str, out: Path, args: List[str], threads: int = 1, seed: int = 0) -> Dict[str, Any]:
    """``ocap prune --model MODEL --classes 0,2,9 ARGS`` in a child process (its torch memory goes back
    when it ends), OpenMP waiting passively as in the quality benchmark; its ``--json`` summary."""
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "ocap_cli", "prune", "--model", model, "--classes", ",".join(map(str, CLASSES)),
           "--threads", str(threads), "--seed", str(seed), "--out", str(out), "--quiet", "--json", *args]
    r = subprocess.run(cmd, cwd=str(root), env=quality._child_env(threads), capture_output=True, text=True)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()
        raise RuntimeError(f"ocap prune of {model} failed: {tail[-1] if tail else r.returncode}")
    return json.loads(r.stdout)


def measure(parent, kind: str, train, test, classes: List[int], out: Path, runs: int, seed: int = 0) -> Dict[str, Any]:
    """Quantize ``parent`` on ``CALIBRATION`` training images of ``classes`` into ``out`` and compare the
    two on the test images of those classes: one row."""
    from ocap_core.quantize import QuantSpec, compare, quantize_package

    pool = train.of_classes(classes)
    frames = pool.x[np.sort(np.random.default_rng(seed).permutation(len(pool))[:CALIBRATION])]
    t0 = time.perf_counter()
    child = quantize_package(parent, frames, out, QuantSpec(calibration=CALIBRATION, seed=seed), classes=classes,
                             source="fashion-mnist train")
    seconds = time.perf_counter() - t0
    res = compare(parent, child, test, classes, threads=1, latency_runs=runs)
    q = child.card.provenance["quantization"]
    return dict(res, model=parent.card.provenance.get("base") or parent.card.name, kind=kind,
                version=parent.card.version, mac_reduction=parent.card.metrics.get("mac_reduction", 1.0),
                quantize_s=round(seconds, 1), activations=q["activations"], reduce_range=q["reduce_range"],
                loadavg=round(os.getloadavg()[0], 2))


def run(quick: bool = False, seed: int = 0) -> Dict[str, Any]:
    """Every model's base and pruned rows (a model whose pruning fails gets an error row)."""
    from ocap_core.data import load_dataset
    from ocap_core.package import open_package
    from ocap_core.quantize import cpu_flags, has_vnni

    mode = QUICK if quick else FULL
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    rows: List[Dict[str, Any]] = []
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for model in mode["models"]:
            base = open_package(model)
            rows.append(measure(base, "base", train, test, list(base.card.class_ids), Path(tmp) / f"{model}-int8",
                                mode["latency_runs"], seed))
            print(f"int8: {model} base {rows[-1]['speedup']:.2f}x", file=sys.stderr, flush=True)
            try:
                t1 = time.perf_counter()
                prune_candidate(model, Path(tmp) / f"{model}-p", mode["prune"], seed=seed)
                prune_s = time.perf_counter() - t1
                pruned = open_package(str(Path(tmp) / f"{model}-p"))
                row = measure(pruned, "pruned", train, test, list(pruned.card.class_ids),
                              Path(tmp) / f"{model}-p-int8", mode["latency_runs"], seed)
                row["prune_s"] = round(prune_s, 1)
            except Exception as e:  # one model's failure is a row that says so, not a lost section
                row = {"model": model, "kind": "pruned", "error": f"{type(e).__name__}: {e}"}
            rows.append(row)
            print(f"int8: {model} pruned " + (row["error"] if "error" in row else f"{row['speedup']:.2f}x"),
                  file=sys.stderr, flush=True)
    flags = cpu_flags()
    return {"rows": rows, "quick": quick, "minutes": (time.perf_counter() - t0) / 60, "vnni": has_vnni(flags),
            "int8_flags": sorted(f for f in flags if "vnni" in f or f.startswith(("amx", "avx512", "asimddp"))),
            "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)], "latency_runs": mode["latency_runs"],
            "prune": " ".join(mode["prune"]) or "the daemon's defaults (the search, 1 pp, 150 s)"}


def judge(rows: List[Dict[str, Any]]) -> List[List[str]]:
    """(target, measured, MET / MISSED): pruned + INT8 at least ``TARGET_SPEEDUP`` as fast as the
    pruned model alone, within ``TARGET_DROP_PP`` of its accuracy, on ``TARGET_MODELS`` models."""
    pruned = [r for r in rows if r.get("kind") == "pruned" and "error" not in r]
    good = [r["model"] for r in pruned if r["speedup"] >= TARGET_SPEEDUP and r["delta_pp"] >= -TARGET_DROP_PP]
    target = (f"pruned + INT8 ≥ {TARGET_SPEEDUP}× as fast as pruned alone, within {TARGET_DROP_PP:g} pp, "
              f"on ≥ {TARGET_MODELS} models")
    measured = f"{len(good)} of {len(pruned)}" + (f" ({', '.join(good)})" if good else "")
    return [[target, measured, "MET" if len(good) >= TARGET_MODELS else "MISSED"]]


def markdown(res: Dict[str, Any], machine: str) -> str:
    rows = res["rows"]
    ok = [r for r in rows if "error" not in r]
    acts = sorted({f"{r['activations']} activations, {'7-bit' if r['reduce_range'] else '8-bit'} weights"
                   for r in ok})
    lines = [f"## INT8 (`ocap bench int8`{' --quick' if res['quick'] else ''})", "",
             run_stamp(machine, res["quick"]) + f", {res['minutes']:.1f} min, at nice 19 on a shared "
             f"machine (1-min load average {res['loadavg'][0]:g} at the start, {res['loadavg'][1]:g} at the end: "
             "other work ran beside it, so absolute times are high and noisy; each ratio comes from the two models "
             "timed call by call in turn). CPU INT8 features: "
             + (", ".join(res["int8_flags"]) or "none") + f" (VNNI: {'yes' if res['vnni'] else 'no'}). "
             f"INT8 is onnxruntime's static quantization (QDQ, per-channel weights, {', '.join(acts) or '-'}, "
             f"min-max ranges from {CALIBRATION} training images of the model's classes). Pruned: `ocap prune "
             f"--classes {','.join(map(str, CLASSES))}` with {res['prune']}. Accuracy on the Fashion-MNIST test "
             f"images of the model's classes; latency: batch 1, 1 onnxruntime thread, median of {res['latency_runs']} "
             "runs each.", "",
             "| model | kind | MACs vs base | FP32 acc | INT8 acc | Δ pp | agreement | FP32 KB | INT8 KB | size ÷ "
             "| FP32 ms | INT8 ms | speedup | INT8 vs base FP32 | quantize s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base_ms = {r["model"]: r["fp32_ms"] for r in ok if r["kind"] == "base"}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['kind']} | {r['error']} |" + " |" * 12)
            continue
        overall = base_ms.get(r["model"], float("nan")) / r["int8_ms"]
        lines.append(f"| {r['model']} | {r['kind']} | {r['mac_reduction']:.1f}× | {100 * r['fp32_accuracy']:.2f} % | "
                     f"{100 * r['int8_accuracy']:.2f} % | {r['delta_pp']:+.2f} | {100 * r['agreement']:.2f} % | "
                     f"{r['fp32_bytes'] / 1024:.0f} | {r['int8_bytes'] / 1024:.0f} | {r['size_ratio']:.2f}× | "
                     f"{r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | {r['speedup']:.2f}× | {figure(overall, '.2f', '×')} | "
                     f"{r['quantize_s']:.1f} |")
    return "\n".join(lines + targets_table(judge(rows)))

