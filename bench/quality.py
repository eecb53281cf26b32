"""``ocap bench quality``: the operating-point search vs baselines on the shipped models (ALGORITHMS.md §7, §11).

For each model and class subset, one child process (so peak RSS is per subset) streams the training
split's images of the subset through the base model, selects samples, and personalizes with every
method; each candidate and the base are evaluated on the test images of the subset (never used for
selection, early stopping or the search). The class-aware search runs first: l1 and random then prune
to exactly the MACs it chose (``target_macs``), so the comparison is at the search's operating point.

Resumable: each finished (model, classes, method) is one JSON line of the rows file, appended as soon
as the child reports it; a later run skips the rows already there (with the same settings) and builds
its tables from every row in the file.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ocap_core import strict_json

MODELS = ["fmnist-cnn", "fmnist-resnet20", "fmnist-mobilenetv2", "fmnist-vgg"]
# shirt / T-shirt / pullover / coat; and shirt / pullover / coat (the confusable sets of ALGORITHMS.md §12)
HARD_SUBSETS = {2: [[0, 6]], 3: [[0, 2, 6], [2, 4, 6]], 5: [[0, 2, 3, 4, 6]]}
SUBSETS_PER_K = 4
COMPARED_MODELS = ("fmnist-resnet20", "fmnist-cnn")                 # every method; the others: ocap only
# method -> what it is (the legend of the markdown); "ocap" (the default engine) runs first in each job
METHODS: Dict[str, str] = {
    "ocap": "the operating-point search with class-aware ranking (the default)",
    "cascade": "the same search, each level also judged with the base as its fallback (the cheapest point kept: "
               "a specialist alone, or one whose doubted frames the base answers)",
    "l1-search": "the same search with l1 ranking",
    "l1": "l1 ranking at exactly the MACs the class-aware search chose for the subset (`target_macs`)",
    "random": "random ranking at exactly those MACs",
    "ocap-ref": "OCAP's original rule with the family's reference protections (one fine-tune, same budget)",
    "ocap+truth": "the class-aware search, fine-tuned with ground-truth labels",
    "ocap+random-select": "the class-aware search on randomly selected samples (equal N) instead of KL",
    "ocap-first": "the class-aware search with the first conv prunable down to 8 channels (every width >= 8)",
}
EVERY_MODEL = ("ocap", "cascade", "ocap-first")        # run on every model; the other methods on COMPARED_MODELS only
# variants explored beside the comparisons: run when --methods names them, not by a full run
# (ocap-first over 24 CNN and ResNet-20 subsets: median 1.79x -> 2.11x fewer MACs, misses 2 -> 5)
EXPLORATORY = ("ocap-first",)
QUICK_METHODS = ["ocap", "cascade", "l1", "ocap+truth"]
MATCHED = ("l1", "random")                  # need the class-aware search's MAC reduction
PRUNE_CLI = "prune-cli"                     # the row of the timed whole `ocap prune`
PRUNE_CLI_CLASSES = [0, 2, 9]
Row = Dict[str, Any]


def class_subsets(k: int, n: int, seed: int, num_classes: int = 10) -> List[List[int]]:
    """The hard subset of size k first, then seeded random subsets, all distinct, sorted."""
    out = [list(s) for s in HARD_SUBSETS.get(k, [])][:n]
    rng = np.random.default_rng(seed + k)
    while len(out) < n:
        s = sorted(int(c) for c in rng.choice(num_classes, size=k, replace=False))
        if s not in out:
            out.append(s)
    return out


def methods_for(model: str, methods: Sequence[str]) -> List[str]:
    """The methods run on ``model`` (comparisons only on ``COMPARED_MODELS``, the searches everywhere), the
    class-aware search first."""
    ms = [m for m in methods if model in COMPARED_MODELS or m in EVERY_MODEL]
    return sorted(dict.fromkeys(ms), key=order)


def order(method: str) -> int:
    """Position of a method in tables and legends."""
    names = list(METHODS)
    return names.index(method) if method in names else len(names)


# ---------------------------------------------------------------- the rows file (resumable runs)

def row_key(row: Row) -> Tuple[str, Tuple[int, ...], str]:
    """(model, classes, method): one row of the rows file per key and settings."""
    return row["model"], tuple(int(c) for c in row["classes"]), row["method"]


def read_rows(path: Optional[Path]) -> List[Row]:
    """Every complete JSON line of the rows file (none when it does not exist). A line cut off by a
    killed run is skipped; its key runs again."""
    if path is None or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and {"model", "classes", "method"} <= set(row):
            rows.append(row)
    return rows


class RowSink:
    """Appends rows to the rows file as they arrive (from several job threads), one JSON line each."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    cut = f.read(1) != b"\n"
                if cut:                           # a killed run left half a line: do not glue onto it
                    with open(self.path, "a", encoding="utf-8") as f:
                        f.write("\n")

    def __call__(self, row: Row) -> None:
        if self.path is None:
            return
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(strict_json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def current(rows: Sequence[Row], settings: Dict[str, Any]) -> List[Row]:
    """Rows made with ``settings``, the last one of each key (a rerun of a key replaces its row)."""
    out: Dict[Tuple[str, Tuple[int, ...], str], Row] = {}
    for r in rows:
        if r.get("settings") == settings:
            out[row_key(r)] = r
    return list(out.values())


def pending(jobs: Sequence[Dict[str, Any]], done: Sequence[Row]) -> List[Dict[str, Any]]:
    """``jobs`` less the methods already in ``done``; a job whose matched baselines still run takes
    the class-aware search's MAC reduction from its finished row."""
    have = {row_key(r): r for r in done}
    out = []
    for job in jobs:
        key = (job["model"], tuple(job["classes"]))
        left = [m for m in job["methods"] if key + (m,) not in have]
        if not left:
            continue
        ocap = have.get(key + ("ocap",))
        job = dict(job, methods=left)
        if ocap is not None:
            job["ocap_macs"] = ocap.get("mac_reduction")        # None when the search found no candidate
        out.append(job)
    return out


# ---------------------------------------------------------------- one job, in a child process

def method_spec(method: str, spec, ocap_macs: Optional[float]):
    """The PruneSpec of ``method`` from the run's class-aware search spec."""
    fixed_ft = replace(spec.finetune, time_budget=spec.search.time_budget)   # one fine-tune, the search's budget
    if method in ("ocap", "ocap+random-select"):
        return replace(spec, search=replace(spec.search, cascade=False))
    if method == "cascade":
        return replace(spec, search=replace(spec.search, cascade=True))
    if method == "ocap+truth":
        return replace(spec, labels="truth")
    if method == "ocap-first":          # the conv after the kept first conv dominates pruned CNNs' latency
        return replace(spec, keep_first=0, min_width=8)
    if method == "l1-search":
        return replace(spec, scorer="l1")
    if method in MATCHED:
        if not ocap_macs:
            raise ValueError("the class-aware search found no operating point to match")
        return replace(spec, scorer=method, target_macs=float(ocap_macs), finetune=fixed_ft)
    if method == "ocap-ref":
        return replace(spec, rule="personalize", keep_first=None, prune_stream=None, min_width=None, min_share=None,
                       finetune=fixed_ft)
    raise ValueError(f"unknown method {method!r}")


def frame_latency(models: Sequence[Any], frames: np.ndarray, runs: int, warmup: int = 20) -> List[float]:
    """Mean batch-1 latency in ms of each served model (``LoadedModel.predict``, a cascade's base
    included where it answers), over ``runs`` frames of ``frames`` in order, the models called in turn
    on each frame: the mean, since a cascade's frames differ in cost (its base answers some)."""
    for i in range(warmup):
        for m in models:
            m.predict(frames[i % len(frames)])
    times = np.zeros(len(models))
    for i in range(runs):
        frame = frames[i % len(frames)]
        for j, m in enumerate(models):
            t0 = time.perf_counter()
            m.predict(frame)
            times[j] += time.perf_counter() - t0
    return [float(t / runs * 1e3) for t in times]


def served_figures(base, pkg, ev: Dict[str, Any], frames: np.ndarray, runs: int) -> Dict[str, Any]:
    """What a frame costs served (``ocap_service``'s ``predict``, a cascade's base included where it
    answers): base and candidate timed in turn on the test frames, and MACs per frame (``ev``, from
    ``evaluate_package``: a cascade's expected MACs); for a cascade also its threshold and the share
    of the test frames its base answered."""
    from ocap_service.model_slot import load_model

    base_ms, served_ms = frame_latency([load_model(str(base.path)), load_model(str(pkg.path))], frames, runs)
    per_frame = float(ev["macs"])
    out = {"macs_per_frame": per_frame, "mac_reduction_per_frame": float(base.card.metrics["macs"]) / per_frame,
           "served_ms": served_ms, "base_served_ms": base_ms, "served_speedup": base_ms / served_ms,
           "fallback_share": ev.get("fallback_share", 0.0)}
    if "tau" in ev:
        out["tau"] = ev["tau"]
    return out


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # Linux: KiB


def run_subset(job: Dict[str, Any], emit: Callable[[Row], None]) -> None:
    """All methods of one (model, classes), each row handed to ``emit`` when it is done; runs inside a
    child process."""
    import torch

    from ocap_core.data import load_dataset
    from ocap_core.errors import OcapError
    from ocap_core.evaluate import evaluate_package
    from ocap_core.finetune import FinetuneSpec
    from ocap_core.package import open_package
    from ocap_core.personalize import personalize
    from ocap_core.preprocess import preprocess
    from ocap_core.prune_spec import PruneSpec
    from ocap_core.runtime import open_session, paired_latency
    from ocap_core.sampling import stream_samples
    from ocap_core.search_spec import SearchSpec

    torch.set_num_threads(job["threads"])
    base = open_package(job["model"])
    classes = job["classes"]
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    search = SearchSpec(time_budget=job["time_budget"], levels=tuple(job["levels"]), max_loss=job["max_loss"])
    spec = PruneSpec(search=search, threads=job["threads"], seed=job["seed"],
                     finetune=FinetuneSpec(epochs=job["epochs"], seed=job["seed"]))
    samples: Dict[str, Any] = {}
    select_s: Dict[str, float] = {}
    base_eval = evaluate_package(base, test, classes, threads=1, latency_runs=0)
    base_sess = open_session(base.onnx_path, threads=1)
    test_k = test.of_classes(classes)
    frame = preprocess(test_k.x[:1], base.card.input)
    # the end-to-end frames: every class in turn, in a seeded order (a cascade's cost depends on the frame)
    frames = test_k.x[np.random.default_rng(job["seed"]).permutation(len(test_k))[:max(job["latency_runs"], 1)]]
    ocap_macs = job.get("ocap_macs")
    head = {"model": job["model"], "k": len(classes), "classes": classes, "seed": job["seed"],
            "settings": job["settings"], "engine": job.get("engine", "unknown")}
    for method in job["methods"]:
        selector = "random" if method == "ocap+random-select" else "kl"
        if selector not in samples:
            t0 = time.perf_counter()
            samples[selector] = stream_samples(base, train, classes, selector, job["per_class"], seed=job["seed"])
            select_s[selector] = round(time.perf_counter() - t0, 3)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                mspec = method_spec(method, spec, ocap_macs)
                res = personalize(base, samples[selector], classes, mspec, Path(tmp) / "cand", name=method)
            except (OcapError, ValueError) as e:     # no candidate is a result to report, not a crash
                emit(dict(head, method=method, error=str(e), seconds=round(time.perf_counter() - t0, 1),
                          loadavg=round(load, 2), peak_rss_mb=_peak_rss_mb(),
                          search={"path": getattr(e, "path", []), "stopped": "no candidate"}))
                continue
            seconds = time.perf_counter() - t0
            ev = evaluate_package(res.package, test, classes, threads=1, latency_runs=0)
            # side by side, call by call: a loaded machine drifts between a job's start and its last method
            base_ms, cand_ms = paired_latency([base_sess, open_session(res.package.onnx_path, threads=1)], frame,
                                              runs=job["latency_runs"])
            card = res.package.card
            onnx_bytes = res.package.onnx_path.stat().st_size
            extra = served_figures(base, res.package, ev, frames, job["latency_runs"])
        searched = card.provenance.get("search")
        if method == "ocap":
            ocap_macs = card.metrics["mac_reduction"]
        emit(dict(
            head, method=method, base_accuracy=base_eval["accuracy"],
            restricted_accuracy=base_eval["restricted_accuracy"], accuracy=ev["accuracy"],
            worst_class=min(ev["per_class"].values()),
            delta_pp=100 * (ev["accuracy"] - base_eval["restricted_accuracy"]),
            mac_reduction=card.metrics["mac_reduction"], param_reduction=card.metrics["param_reduction"],
            target_macs=mspec.target_macs or None, latency_ms=cand_ms, base_latency_ms=base_ms,
            latency_speedup=base_ms / cand_ms, latency_timing="paired",
            onnx_size_ratio=base.onnx_path.stat().st_size / onnx_bytes,
            timings=dict(card.metrics.get("timings") or card.provenance.get("timings") or {},
                         sample_selection=select_s[selector]),
            val_agreement=card.metrics["val_agreement"], samples=card.provenance["samples"],
            search=searched, path_len=len(searched["path"]) if searched else 0,
            seconds=round(seconds, 1), loadavg=round(load, 2), peak_rss_mb=_peak_rss_mb(), **extra))


def _child_env(threads: int) -> Dict[str, str]:
    """The benchmark's child: the repository on the path, its OpenMP threads wait passively (as the
    daemon's worker's do) so a busy box does not stall them."""
    from ocap_daemon.cores import PASSIVE_OPENMP, THREAD_VARS

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(PASSIVE_OPENMP)
    env.update({v: str(threads) for v in THREAD_VARS})
    return env


def engine_version() -> str:
    """The engine a row was made with: the commit of the checkout, ``+dirty`` when ocap_core/ has
    uncommitted changes (a resumed run may span engine changes; the report says which rows came from which)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(root), capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ocap_core"], cwd=str(root),
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _run_job(job: Dict[str, Any], on_row: Optional[Callable[[Row], None]]) -> List[Row]:
    """One child process; each row is passed to ``on_row`` as soon as the child prints it. A child that
    dies yields one ``crashed`` row per method it did not report (not written to the rows file)."""
    root = Path(__file__).resolve().parent.parent
    job = dict(job, engine=engine_version())
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.quality", strict_json.dumps(job)], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=str(root), env=_child_env(job["threads"]))
        rows: List[Row] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                row = json.loads(line)
                rows.append(row)
                if on_row:
                    on_row(row)
        rc = proc.wait()
        err.seek(0)
        tail = err.read()[-3000:]
    if rc != 0:
        got = {r["method"] for r in rows}
        rows += [{"model": job["model"], "k": len(job["classes"]), "classes": job["classes"], "method": m,
                  "seed": job["seed"], "settings": job["settings"], "crashed": True,
                  "error": f"worker exited {rc}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
                 for m in job["methods"] if m not in got]
    return rows


def run_jobs(jobs: Sequence[Dict[str, Any]], progress=None, workers: int = 1,
             on_row: Optional[Callable[[Row], None]] = None) -> List[Row]:
    """Each job in its own ``python -m bench.quality JOB`` child process (fresh RSS), ``workers`` at a
    time; ``on_row`` sees every finished row at once (the rows file); rows come back in job order."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    results: List[List[Row]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, new in enumerate(pool.map(lambda j: _run_job(j, on_row), jobs)):
            results.append(new)
            if progress:
                progress(i + 1, len(jobs), jobs[i], new, time.perf_counter() - t0)
    return [row for new in results for row in new]


def plan(models: Sequence[str], ks: Sequence[int], subsets: int, methods: Sequence[str], settings: Dict[str, Any],
         chosen: Optional[Dict[int, List[List[int]]]] = None) -> List[Dict[str, Any]]:
    """One job per (model, subset): the methods that model runs, and the run's settings. Subsets are
    ``class_subsets`` unless ``chosen`` names them for a K."""
    chosen = chosen or {}
    return [dict(settings, model=m, classes=c, methods=methods_for(m, methods), settings=settings)
            for m in models for k in ks for c in chosen.get(k, class_subsets(k, subsets, settings["seed"]))
            if methods_for(m, methods)]


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


def _emit(row: Row) -> None:
    print(strict_json.dumps(row), flush=True)


if __name__ == "__main__":
    run_subset(json.loads(sys.argv[1]), _emit)
