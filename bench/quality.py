"""``ocap bench quality``: class-aware pruning vs baselines on the shipped models (ALGORITHMS.md §7).

For each model and class subset, one child process (so peak RSS is per subset) streams the training
split's images of the subset through the base model, selects samples, and personalizes with every
method; each candidate and the base are evaluated on the test images of the subset. Methods share
data and fine-tuning budget; l1 / random get the ocap run's per-group widths (equal MACs).
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

MODELS = ["fmnist-cnn", "fmnist-resnet20", "fmnist-mobilenetv2", "fmnist-vgg"]
HARD_SUBSETS = {2: [[0, 6]], 3: [[0, 2, 6]], 5: [[0, 2, 3, 4, 6]]}   # shirt / T-shirt / pullover / coat
METHODS = ["ocap", "cap", "hybrid", "l1", "random", "ocap+truth", "ocap+random-select"]
QUICK_METHODS = ["ocap", "l1", "ocap+truth", "ocap+random-select"]


def class_subsets(k: int, n: int, seed: int, num_classes: int = 10) -> List[List[int]]:
    """The hard subset of size k first, then seeded random subsets, all distinct, sorted."""
    out = [list(s) for s in HARD_SUBSETS.get(k, [])][:n]
    rng = np.random.default_rng(seed + k)
    while len(out) < n:
        s = sorted(int(c) for c in rng.choice(num_classes, size=k, replace=False))
        if s not in out:
            out.append(s)
    return out


def _method_spec(method: str, base_spec, ocap_widths: Optional[Dict[str, int]], freqs: Dict[int, float]):
    if method in ("ocap", "ocap+random-select"):
        return base_spec
    if method == "ocap+truth":
        return replace(base_spec, labels="truth")
    if method == "cap":
        return replace(base_spec, scorer="cap", rule="cap", tau=0.9)   # tau 0: CAP marks every channel (docs)
    if method == "hybrid":
        return replace(base_spec, rule="hybrid", theta=0.5 * min(freqs.values()))
    if method in ("l1", "random"):
        return replace(base_spec, scorer=method, match_widths=ocap_widths)
    raise ValueError(method)


def run_subset(job: Dict[str, Any]) -> List[Dict[str, Any]]:
    """All methods for one (model, classes); runs inside a child process."""
    import torch

    from ocap_core.data import load_dataset
    from ocap_core.errors import OcapError
    from ocap_core.evaluate import evaluate_package
    from ocap_core.package import open_package
    from ocap_core.personalize import personalize
    from ocap_core.prune_spec import PruneSpec
    from ocap_core.sampling import stream_samples

    torch.set_num_threads(job["threads"])
    base = open_package(job["model"])
    classes = job["classes"]
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    spec = PruneSpec(**job["spec"]) if job.get("spec") else PruneSpec()
    spec = replace(spec, threads=job["threads"], seed=job["seed"],
                   finetune=replace(spec.finetune, epochs=job["epochs"], seed=job["seed"],
                                    time_budget=job.get("time_budget", 0.0)))
    t0 = time.perf_counter()
    samples = {sel: stream_samples(base, train, classes, sel, job["per_class"], seed=job["seed"])
               for sel in ("kl", "random")}
    select_s = (time.perf_counter() - t0) / 2
    # a skewed observed mix for the hybrid rule: Zipf shares over the subset
    shares = np.array([1.0 / (i + 1) for i in range(len(classes))])
    freqs = {k: float(s) for k, s in zip(classes, shares / shares.sum())}
    base_eval = evaluate_package(base, test, classes, threads=1, latency_runs=job["latency_runs"])
    rows, ocap_widths = [], None
    for method in job["methods"]:
        mspec = _method_spec(method, spec, ocap_widths, freqs)
        data = samples["random" if method == "ocap+random-select" else "kl"]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                res = personalize(base, data, classes, mspec, Path(tmp) / "cand", class_freqs=freqs, name=method)
            except OcapError as e:          # a refused candidate is a result to report, not a crash
                rows.append({"model": job["model"], "k": len(classes), "classes": classes, "method": method,
                             "seed": job["seed"], "error": str(e)})
                continue
            ev = evaluate_package(res.package, test, classes, threads=1, latency_runs=job["latency_runs"])
            card = res.package.card
            onnx_bytes = res.package.onnx_path.stat().st_size
        if method == "ocap":
            ocap_widths = {root: w[0] for root, w in card.provenance["widths"].items()}
        rows.append({
            "model": job["model"], "k": len(classes), "classes": classes, "method": method, "seed": job["seed"],
            "base_accuracy": base_eval["accuracy"], "restricted_accuracy": base_eval["restricted_accuracy"],
            "accuracy": ev["accuracy"], "worst_class": min(ev["per_class"].values()),
            "delta_pp": 100 * (ev["accuracy"] - base_eval["restricted_accuracy"]),
            "mac_reduction": card.metrics["mac_reduction"], "param_reduction": card.metrics["param_reduction"],
            "latency_ms": ev["latency_ms"], "base_latency_ms": base_eval["latency_ms"],
            "latency_speedup": base_eval["latency_ms"] / ev["latency_ms"],
            "onnx_size_ratio": base.onnx_path.stat().st_size / onnx_bytes,
            "timings": dict(card.metrics["timings"], sample_selection=round(select_s, 3)),
            "val_agreement": card.metrics["val_agreement"], "finetune_stopped": card.provenance["finetune"]["stopped"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
    return rows


def _run_job(job: Dict[str, Any]) -> List[Dict[str, Any]]:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "bench.quality", json.dumps(job)], capture_output=True, text=True,
                         cwd=str(root), env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark job {job['model']} {job['classes']} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def run_jobs(jobs: Sequence[Dict[str, Any]], progress=None, workers: int = 1) -> List[Dict[str, Any]]:
    """Each job in its own ``python -m bench.quality JOB`` child process (fresh RSS), ``workers`` at a
    time; rows come back in job order."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    results: List[List[Dict[str, Any]]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, new in enumerate(pool.map(_run_job, jobs)):
            results.append(new)
            if progress:
                progress(i + 1, len(jobs), jobs[i], new, time.perf_counter() - t0)
    return [row for new in results for row in new]


def plan(models: Sequence[str], ks: Sequence[int], subsets: int, methods: Sequence[str], seed: int, epochs: int,
         per_class: int, threads: int, latency_runs: int, spec: Optional[Dict[str, Any]] = None,
         time_budget: float = 0.0) -> List[Dict[str, Any]]:
    return [{"model": m, "classes": c, "methods": list(methods), "seed": seed, "epochs": epochs,
             "per_class": per_class, "threads": threads, "latency_runs": latency_runs, "spec": spec or {},
             "time_budget": time_budget}
            for m in models for k in ks for c in class_subsets(k, subsets, seed)]


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


if __name__ == "__main__":
    for row in run_subset(json.loads(sys.argv[1])):
        print(json.dumps(row), flush=True)
