"""``ocap bench``: parse the benchmark's options, run it, write docs/benchmarks.md (and a plot)."""

import argparse
import json
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import quality, report

ROOT = Path(__file__).resolve().parent.parent


def _versions() -> dict:
    out = {}
    for pkg in ("torch", "torch-pruning", "onnxruntime", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


def time_resnet20_prune(threads: int, seed: int) -> float:
    """Wall seconds of the whole `ocap prune` CLI on fmnist-resnet20 at K = 3 (a fresh process)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ocap_core", "prune", "--model", "fmnist-resnet20", "--classes",
                        "0,2,9", "--threads", str(threads), "--seed", str(seed), "--out", f"{tmp}/c", "--quiet"],
                       check=True, cwd=str(ROOT), capture_output=True)
        return time.perf_counter() - t0


def run_bench(args: argparse.Namespace) -> int:
    if args.which == "all":
        return run_all(args)
    if args.which == "summary":
        return write_summary(args, 0.0)
    if args.which in SECTIONS:
        return run_section(args.which, args)
    return run_quality(args)


def run_quality(args: argparse.Namespace) -> int:
    if args.quick:
        models, ks, subsets, methods = ["fmnist-cnn"], [2, 3], 1, quality.QUICK_METHODS
        epochs, per_class, latency_runs = min(args.epochs, 10), min(args.samples_per_class, 64), 50
    else:
        models = args.models.split(",") if args.models else quality.MODELS
        ks = [int(k) for k in args.ks.split(",")]
        subsets, epochs, per_class, latency_runs = args.subsets, args.epochs, args.samples_per_class, 200
        methods = args.methods.split(",") if args.methods else quality.METHODS
    jobs = quality.plan(models, ks, subsets, methods, args.seed, epochs, per_class, args.threads, latency_runs,
                        time_budget=args.time_budget)
    t0 = time.perf_counter()

    def progress(i, n, job, rows, seconds):
        best = ", ".join(f"{r['method']} failed" if "error" in r else
                         f"{r['method']} {r['delta_pp']:+.1f}pp {r['mac_reduction']:.1f}x" for r in rows)
        print(f"[{i}/{n}] {job['model']} {job['classes']} ({seconds:.0f} s): {best}", file=sys.stderr, flush=True)

    rows = quality.run_jobs(jobs, progress, workers=args.workers)
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    prune_seconds = None if args.quick or "fmnist-resnet20" not in models else time_resnet20_prune(2, args.seed)
    out = Path(args.out)
    plot = out.parent / ("quality-quick.png" if args.quick else "quality.png")
    report.plot_quality(rows, plot)
    settings = {"models": ",".join(models), "K": ",".join(map(str, ks)), "subsets per K": subsets,
                "samples per class": per_class, "fine-tuning epochs": epochs,
                "fine-tuning budget": f"{args.time_budget:g} s" if args.time_budget else "none", "seed": args.seed,
                "threads per run": args.threads, "parallel runs": args.workers, "mode": "quick" if args.quick else "full",
                "wall time": f"{(time.perf_counter() - t0) / 60:.1f} min"}
    md = report.quality_markdown(rows, settings, quality.machine(), _versions(), prune_seconds, plot.name,
                                 failed=failed)
    report.replace_section(out, "quality-quick" if args.quick else "quality", md)
    if args.rows:
        Path(args.rows).write_text("".join(json.dumps(r) + "\n" for r in rows + failed), encoding="utf-8")
    print(f"wrote {out} and {plot} ({len(rows)} runs)", file=sys.stderr)
    return 0




def _serving(args: argparse.Namespace) -> str:
    from . import serving

    versions = {k: v for k, v in _versions().items() if k in ("onnxruntime", "numpy")}
    return serving.markdown(serving.run(quick=args.quick), quality.machine(), versions)


def _loop(args: argparse.Namespace) -> str:
    from . import loop

    return loop.markdown(loop.run(quick=args.quick, seed=args.seed), quality.machine(), args.quick)


def _load(args: argparse.Namespace) -> str:
    from . import load

    return load.markdown(load.run(quick=args.quick), quality.machine(), args.quick)


def _soak(args: argparse.Namespace) -> str:
    from . import soak

    return soak.markdown(soak.run(quick=args.quick), quality.machine(), args.quick)


def _reliability(args: argparse.Namespace) -> str:
    from . import reliability

    return reliability.markdown(reliability.run(quick=args.quick), quality.machine())


def _security(args: argparse.Namespace) -> str:
    from . import security

    return security.markdown(security.run(), quality.machine())


def _threads(args: argparse.Namespace) -> str:
    from . import threads

    return threads.markdown(threads.run(quick=args.quick), quality.machine())


# benchmark -> its run-and-render function (each writes one section; quick runs their own "-quick" one)
SECTIONS = {"serving": _serving, "loop": _loop, "load": _load, "soak": _soak, "reliability": _reliability,
            "security": _security, "threads": _threads}


def section_name(which: str, quick: bool) -> str:
    return which + ("-quick" if quick else "")


def run_section(which: str, args: argparse.Namespace) -> int:
    out = Path(args.out)
    t0 = time.perf_counter()
    report.replace_section(out, section_name(which, args.quick), SECTIONS[which](args))
    print(f"{which}: wrote {out} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


def run_all(args: argparse.Namespace) -> int:
    """Every benchmark in turn, then a summary of the verdicts of every section."""
    t0 = time.perf_counter()
    failed = []
    for which in ["quality"] + list(SECTIONS):
        try:
            run_quality(args) if which == "quality" else run_section(which, args)
        except Exception as e:  # one broken benchmark must not hide the others' figures
            print(f"{which}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(which)
    write_summary(args, (time.perf_counter() - t0) / 60)
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def write_summary(args: argparse.Namespace, minutes: float) -> int:
    """The summary section from the sections already in the file (``ocap bench summary``)."""
    names = [section_name(w, args.quick) for w in ["quality"] + list(SECTIONS)]
    out = Path(args.out)
    report.replace_section(out, section_name("summary", args.quick),
                           report.summary_markdown(out, names, quality.machine(), _versions(), minutes))
    return 0
