"""The demo's report: Markdown with the before/after table and the event log, a plot of class
frequencies over time with the events marked, and accuracy against MACs."""

import time
from pathlib import Path
from typing import Any, Dict, List

from ocap_service.event_kinds import Event


def _plots(out: Path, summary: Dict[str, Any], requests: List[tuple], events: List[Dict[str, Any]],
           t0: float) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    seconds = int(max((r[0] for r in requests), default=t0) - t0) + 1
    classes = sorted({r[2] for r in requests if r[4]})
    counts = {k: [0] * seconds for k in classes}
    for t, _, pred, _, ok, _ in requests:
        if ok:
            counts[pred][int(t - t0)] += 1
    fig, ax = plt.subplots(figsize=(10, 4))
    for k in classes:
        ax.plot(range(seconds), counts[k], label=f"class {k}", lw=1)
    marks = {Event.PERSONALIZE_STARTED: "tab:blue", Event.DEPLOY: "tab:green", Event.PROBATION_PASSED: "tab:olive",
             Event.DRIFT: "tab:red", Event.ROLLBACK: "tab:red", Event.GATE: "tab:purple"}
    for e in events:
        if e["kind"] in marks and e["ts"] >= t0:
            ax.axvline(e["ts"] - t0, color=marks[e["kind"]], ls="--", lw=1)
            ax.text(e["ts"] - t0, ax.get_ylim()[1] * 0.95, e["kind"], rotation=90, va="top", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("predictions per second")
    ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(out / "frequencies.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in summary["models"]:
        ax.scatter(r["macs"] / 1e6, 100 * r["accuracy"])
        ax.annotate(r["model"], (r["macs"] / 1e6, 100 * r["accuracy"]), fontsize=8)
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel(f"accuracy on classes {summary['classes']} (%)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_macs.png", dpi=110)
    plt.close(fig)
    return ["frequencies.png", "accuracy_vs_macs.png"]


def write_report(out: Path, summary: Dict[str, Any], requests: List[tuple], events: List[Dict[str, Any]],
                 t0: float, t_drift: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, summary, requests, events, t0)
    lines = [f"# ocap demo, {time.strftime('%Y-%m-%d %H:%M', time.localtime(t0))}", "",
             f"Observed classes {summary['classes']}; class {summary['drift_class']} joined at "
             f"{t_drift - t0:.0f} s. {summary['requests']} requests sent, {summary['failed']} failed; the daemon "
             f"served {summary['served_by_daemon']} frames. Accuracy is on held-out test images of the observed "
             "classes that were never replayed to the daemon; latency p50 is the demo's own batch-1 measurement on the "
             "CPU, and the last column the execution providers ocapd served each model on.", "",
             "| model | version | classes | accuracy | MACs | latency p50 | ONNX size | ocapd ran it on |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["models"]:
        lines.append(f"| {r['model']} | {r['version']} | {len(r['classes'])} | {100 * r['accuracy']:.2f}% | "
                     f"{r['macs'] / 1e6:.2f} M | {r['latency_ms']:.3f} ms | {r['size_mb']:.2f} MB | "
                     f"{', '.join(r.get('providers') or []) or '-'} |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + ["", "## Events", "", "| t (s) | event | detail |", "|---|---|---|"]
    for e in events:
        if e["ts"] >= t0 and e["kind"] != Event.PERSONALIZE_PROGRESS:
            detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items() if k not in ("timings", "metrics"))
            lines.append(f"| {e['ts'] - t0:.0f} | {e['kind']} | {detail[:200]} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
