"""``ocap bench``: the benchmark's options (``add_commands`` adds the command to the ``ocap`` parser that
``ocap_cli`` composes), run it, write docs/benchmarks.md (and a plot)."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ocap_core.cli import add_command
from ocap_core.errors import OcapError

from . import quality, report

ROOT = Path(__file__).resolve().parent.parent


def _versions() -> dict:
    """Installed versions of what the figures depend on ("-" where absent)."""
    import importlib

    out = {}
    for pkg, module in (("torch", "torch"), ("torch-pruning", "torch_pruning"), ("onnxruntime", "onnxruntime"),
                        ("numpy", "numpy")):
        try:                       # (importlib.metadata is 3.8+; the torch-free tests run bench on 3.6 too)
            out[pkg] = str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            out[pkg] = "-"
    return out


# quick mode (CI's budget): one model, one easy subset at K = 2 and 3 (a short search on a busy box finds
# no operating point on the hard ones, and the smoke test should exercise the rows of a found one), a
# short search over a few levels
# (2 points: 128 images per class hold back 256 per class, and a 1-point budget is judged on 300)
QUICK = {"models": ["fmnist-cnn"], "ks": [2, 3], "subsets": {2: [[1, 8]], 3: [[3, 5, 9]]}, "time_budget": 20.0,
         "max_loss": 2.0,
         "levels": [2.0, 4.0, 8.0], "epochs": 10, "per_class": 128, "latency_runs": 50}


def _given(args: argparse.Namespace, flag: str) -> bool:
    """Whether ``flag`` was on the command line (the parser's defaults are those of quick runs)."""
    return any(a == flag or a.startswith(flag + "=") for a in getattr(args, "argv", None) or [])


def named_subsets(text: str) -> Dict[int, List[List[int]]]:
    """``--classes``: subsets separated by ';', class ids by ',' -> {K: [subsets of K classes]}."""
    out: Dict[int, List[List[int]]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        try:
            subset = sorted({int(c) for c in part.split(",")})
        except ValueError:
            raise OcapError(f"--classes: {part!r} is not comma-separated class ids") from None
        if len(subset) < 2 or min(subset) < 0:
            raise OcapError(f"--classes: {part!r} needs two or more distinct class ids >= 0")
        out.setdefault(len(subset), []).append(subset)
    if not out:
        raise OcapError(f"--classes: no class subset in {text!r}")
    return out


def quality_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """What a row depends on (rows made with other settings are not resumed or tabled): full runs use
    the daemon's budgets (SearchSpec's defaults), quick runs a short search over a few levels."""
    from ocap_core.search_spec import SearchSpec

    d = SearchSpec()
    if args.quick:
        budget = args.time_budget if _given(args, "--time-budget") and args.time_budget > 0 else QUICK["time_budget"]
        return {"time_budget": budget, "levels": QUICK["levels"], "max_loss": QUICK["max_loss"],
                "per_class": min(args.samples_per_class, QUICK["per_class"]), "epochs": min(args.epochs, QUICK["epochs"]),
                "seed": args.seed, "threads": args.threads, "latency_runs": QUICK["latency_runs"]}
    budget = args.time_budget if _given(args, "--time-budget") and args.time_budget > 0 else d.time_budget
    return {"time_budget": budget, "levels": list(d.levels), "max_loss": d.max_loss, "per_class": args.samples_per_class,
            "epochs": args.epochs, "seed": args.seed, "threads": args.threads, "latency_runs": 200}


def rows_path(args: argparse.Namespace) -> Optional[Path]:
    """The resumable rows file: ``--rows``, else docs/quality-rows.jsonl beside ``--out`` for full runs
    (quick runs keep their rows in memory unless ``--rows`` names a file)."""
    if args.rows:
        return Path(args.rows)
    return None if args.quick else Path(args.out).parent / "quality-rows.jsonl"


def time_resnet20_prune(threads: int, seed: int) -> Dict[str, Any]:
    """The whole `ocap prune` CLI on fmnist-resnet20 at K = 3 (daemon defaults, search included) in a fresh
    process, its OpenMP threads passive as the daemon's worker's: wall seconds and the process's own peak
    RSS (``wait4``'s rusage, so earlier children do not count), as a row of the rows file."""
    import tempfile

    from ocap_daemon.cores import PASSIVE_OPENMP, THREAD_VARS

    env = dict(os.environ, **PASSIVE_OPENMP, **{v: str(threads) for v in THREAD_VARS})
    row: Dict[str, Any] = {"model": "fmnist-resnet20", "k": len(quality.PRUNE_CLI_CLASSES),
                           "classes": quality.PRUNE_CLI_CLASSES, "method": quality.PRUNE_CLI, "seed": seed,
                           "threads": threads, "loadavg": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ocap_cli", "prune", "--model", "fmnist-resnet20", "--classes",
                                 ",".join(map(str, quality.PRUNE_CLI_CLASSES)), "--threads", str(threads), "--seed",
                                 str(seed), "--out", f"{tmp}/c", "--quiet"],
                                cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        row.update(seconds=round(time.perf_counter() - t0, 1), peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()
            row["error"] = f"exit {proc.returncode}: {tail[-1] if tail else ''}"
    return row


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=["quality", "serving", "loop", "load", "soak", "reliability", "security", "threads",
                                     "stress", "int8", "budget", "formats", "all", "summary"],
                   help="which benchmark (all: every one, then a summary; summary: only the summary)")
    p.add_argument("--quick", action="store_true", help="small, CI-friendly run (one model, fewer subsets)")
    p.add_argument("--models", help="comma-separated shipped models (default: all four)")
    p.add_argument("--ks", default="2,3,5", help="numbers of observed classes")
    p.add_argument("--subsets", type=int, default=4, help="class subsets per K")
    p.add_argument("--classes", help="quality: these class subsets instead of --ks and --subsets, e.g. "
                                     "'0,2,6;2,4,6' (each sorted; a K of its own per size)")
    p.add_argument("--methods", help="comma-separated methods (default: all but the exploratory ocap-first)")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs per run")
    p.add_argument("--samples-per-class", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the class subsets, samples and training")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="search seconds of work per run (0: the daemon's default; quick runs: 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--minutes", type=float, help="soak: how long (default 130, quick 0.5)")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (one process each)")
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file whose section is replaced")
    p.add_argument("--rows", help="resumable rows file: rows in it are skipped, tables built from all "
                                  "(default for full runs: docs/quality-rows.jsonl)")
    p.add_argument("--report-only", action="store_true",
                   help="quality: run nothing, rebuild the section from the rows file as far as the run got")


HELP = "run a benchmark and write its figures to docs/benchmarks.md"


def add_commands(sub: Any) -> None:
    """``ocap bench``, added to the ``ocap`` parser's subcommands."""
    add_command(sub, "bench", add_arguments, run_bench, HELP)


def run_bench(args: argparse.Namespace) -> int:
    if args.which == "all":
        return run_all(args)
    if args.which == "summary":
        return write_summary(args, 0.0)
    if args.which in SECTIONS:
        return run_section(args.which, args)
    return run_quality(args)


def _progress(i: int, n: int, job: Dict[str, Any], rows: List[Dict[str, Any]], seconds: float) -> None:
    done = ", ".join(f"{r['method']} " + ("crashed" if r.get("crashed") else "no candidate") if "error" in r else
                     f"{r['method']} {r['delta_pp']:+.1f}pp {r['mac_reduction']:.1f}x" for r in rows)
    print(f"[{i}/{n}] {job['model']} {job['classes']} ({seconds:.0f} s): {done}", file=sys.stderr, flush=True)


def run_quality(args: argparse.Namespace) -> int:
    """Run the (model, subset, method) rows the rows file lacks, then rebuild the section from every row."""
    settings = quality_settings(args)
    if args.quick:
        models, ks, subsets, methods = QUICK["models"], QUICK["ks"], 1, quality.QUICK_METHODS
    else:
        models = args.models.split(",") if args.models else quality.MODELS
        ks = [int(k) for k in args.ks.split(",")]
        subsets = args.subsets if _given(args, "--subsets") else max(args.subsets, quality.SUBSETS_PER_K)
        methods = args.methods.split(",") if args.methods else [m for m in quality.METHODS
                                                                 if m not in quality.EXPLORATORY]
    unknown = [m for m in methods if m not in quality.METHODS]
    if unknown:
        raise OcapError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(quality.METHODS)}")
    path = rows_path(args)
    before = quality.read_rows(path)
    done = quality.current(before, settings)
    chosen = QUICK["subsets"] if args.quick else None
    if args.classes and not args.quick:
        chosen = named_subsets(args.classes)
        ks = sorted(chosen)
    jobs = quality.pending(quality.plan(models, ks, subsets, methods, settings, chosen), done)
    if args.report_only:
        if path is None:
            raise OcapError("--report-only needs a rows file (--rows, or a full run's default)")
        jobs = []
    todo = sum(len(j["methods"]) for j in jobs)
    print(f"quality: {len(done)} rows already in {path}, {todo} to run in {len(jobs)} jobs" if path else
          f"quality: {todo} rows to run in {len(jobs)} jobs", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    sink = quality.RowSink(path)
    new = quality.run_jobs(jobs, _progress, workers=args.workers, on_row=sink)
    crashed = [r for r in new if r.get("crashed")]
    prune_key = ("fmnist-resnet20", tuple(quality.PRUNE_CLI_CLASSES), quality.PRUNE_CLI)
    if (not args.quick and not args.report_only and "fmnist-resnet20" in models
            and prune_key not in {quality.row_key(r) for r in done + new}):
        row = dict(time_resnet20_prune(2, args.seed), settings=settings)
        sink(row)
        new.append(row)
    rows = quality.current(quality.read_rows(path), settings) if path else [r for r in new if not r.get("crashed")]
    others = sum(r.get("settings") != settings for r in before)
    prune = next((r for r in rows if r["method"] == quality.PRUNE_CLI), None)
    rows = [r for r in rows if r["method"] != quality.PRUNE_CLI]
    out = Path(args.out)
    # a run of named subsets (--classes) has a section and plot of its own beside the full run's
    section = "quality-quick" if args.quick else "quality-named" if args.classes else "quality"
    plot = out.parent / f"{section}.png"
    report.plot_quality(rows, plot)
    shown = {
        "mode": "quick" if args.quick else "full (the daemon's budgets)",
        "models": ",".join(sorted({r["model"] for r in rows})) or "none",
        "K": ",".join(map(str, sorted({r["k"] for r in rows}))) or "none",
        "subsets per K": subsets, "samples per class": settings["per_class"],
        "search budget": f"{settings['time_budget']:g} s per run",
        "levels": "/".join(f"{x:g}" for x in settings["levels"]), "max loss": f"{settings['max_loss']:g} pp",
        "epochs": settings["epochs"], "seed": settings["seed"], "threads per run": settings["threads"],
        "parallel runs": "as the rows were made" if args.report_only else args.workers,
        "rows": f"{len(rows)} (rebuilt from the rows file, nothing run)" if args.report_only else
                f"{len(rows)} ({len([r for r in new if not r.get('crashed')])} from this run, "
                f"{(time.perf_counter() - t0) / 60:.1f} min)"}
    notes = f"Rows from {path.name}." if path else ""
    if others:
        notes += f" {others} row(s) of that file were made with other settings and are left out."
    md = report.quality_markdown(rows, shown, quality.machine(), _versions(), prune, plot.name, notes=notes.strip(),
                                 crashed=crashed, title="Personalization quality" + (", quick" if args.quick else
                                                                                    ", named subsets" if args.classes else ""))
    report.replace_section(out, section, md)
    print(f"wrote {out} and {plot} ({len(rows)} rows{f', {len(crashed)} crashed' if crashed else ''})",
          file=sys.stderr)
    return 0


def _serving(args: argparse.Namespace) -> str:
    from . import serving

    versions = {k: v for k, v in _versions().items() if k in ("onnxruntime", "numpy")}
    return serving.markdown(serving.run(quick=args.quick), quality.machine(), versions)


def _loop(args: argparse.Namespace) -> str:
    from . import loop

    rows = loop.run(quick=args.quick, seed=args.seed)
    if not args.quick:
        loop.save_rows(rows, Path(args.out).parent / "loop-rows.json")
    return loop.markdown(rows, quality.machine(), args.quick)


def _load(args: argparse.Namespace) -> str:
    from . import load

    return load.markdown(load.run(quick=args.quick), quality.machine(), args.quick)


def _soak(args: argparse.Namespace) -> str:
    from . import soak

    out = Path(args.out)
    res = soak.run(quick=args.quick, minutes=args.minutes, samples_path=out.parent / "soak-samples.jsonl"
                   if not args.quick else None)
    plot = ""
    if not args.quick:                      # the curve beside the report, linked from it
        (out.parent / "soak-rss.svg").write_text(soak.svg(res), encoding="utf-8")
        plot = "soak-rss.svg"
    return soak.markdown(res, quality.machine(), args.quick, plot)


def _reliability(args: argparse.Namespace) -> str:
    from . import reliability

    return reliability.markdown(reliability.run(quick=args.quick), quality.machine())


def _security(args: argparse.Namespace) -> str:
    from . import security

    return security.markdown(security.run(), quality.machine())


def _threads(args: argparse.Namespace) -> str:
    from . import threads

    return threads.markdown(threads.run(quick=args.quick), quality.machine())


def _stress(args: argparse.Namespace) -> str:
    from . import stress

    return stress.markdown(stress.run(quick=args.quick), quality.machine())


def _int8(args: argparse.Namespace) -> str:
    from . import int8

    return int8.markdown(int8.run(quick=args.quick, seed=args.seed), quality.machine())


def _budget(args: argparse.Namespace) -> str:
    from . import budget

    return budget.markdown(budget.run(quick=args.quick, seed=args.seed), quality.machine())


def _formats(args: argparse.Namespace) -> str:
    from . import formats

    return formats.markdown(formats.run(quick=args.quick), quality.machine())


# benchmark -> its run-and-render function (each writes one section; quick runs their own "-quick" one)
SECTIONS = {"serving": _serving, "loop": _loop, "load": _load, "soak": _soak, "reliability": _reliability,
            "security": _security, "threads": _threads, "stress": _stress, "int8": _int8, "budget": _budget,
            "formats": _formats}


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
