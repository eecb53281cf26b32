"""The demo's report: Markdown with the before/after table and the event log, a plot of class
frequencies over time with the events marked, and accuracy against MACs."""

import time
from pathlib import Path
from typing import Any, Dict, List

from ocap_service.event_kinds import Event

from .status import cut_words


def _class_names(summary: Dict[str, Any]) -> List[str]:
    """The base label space's names (from the first model's card), or none when it cannot be read."""
    from ocap_core.errors import OcapError
    from ocap_core.package import open_package

    try:
        return list(open_package(summary["models"][0]["path"], verify=False).card.class_names)
    except (OcapError, OSError, KeyError, IndexError):
        return []


LABEL_LEVELS = 4          # event labels take turns over this many heights, so that close ones do not overlap


def _plots(out: Path, summary: Dict[str, Any], requests: List[tuple], events: List[Dict[str, Any]],
           t0: float) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = _class_names(summary)
    seconds = int(max((r[0] for r in requests), default=t0) - t0) + 1
    classes = sorted({r[2] for r in requests if r[4]})
    counts = {k: [0] * seconds for k in classes}
    for t, _, pred, _, ok, _ in requests:
        if ok:
            counts[pred][int(t - t0)] += 1
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for k in classes:
        ax.plot(range(seconds), counts[k], label=f"{k} {names[k]}" if k < len(names) else f"class {k}", lw=1)
    marks = {Event.PERSONALIZE_STARTED: "tab:blue", Event.DEPLOY: "tab:green", Event.PROBATION_PASSED: "tab:olive",
             Event.DRIFT: "tab:red", Event.ROLLBACK: "tab:red", Event.GATE: "tab:purple"}
    shown = [e for e in events if e["kind"] in marks and e["ts"] >= t0]
    for i, e in enumerate(shown):          # labels above the plot, taking turns over a few heights
        x = e["ts"] - t0
        ax.axvline(x, color=marks[e["kind"]], ls="--", lw=1)
        ax.annotate(str(e["kind"]).replace("_", " "), (x, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, 4 + 11 * (i % LABEL_LEVELS)), textcoords="offset points", fontsize=7,
                    color=marks[e["kind"]], annotation_clip=False)
    ax.set_xlabel("seconds since the demo started")
    ax.set_ylabel("predictions per second")
    ax.set_title(f"What the daemon answered: classes {summary['classes']} observed, class "
                 f"{summary['drift_class']} joins later (drift)", pad=12 + 11 * LABEL_LEVELS, fontsize=10)
    if classes:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="predicted class", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "frequencies.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = summary["models"]
    for r in rows:
        ax.scatter(r["macs"] / 1e6, 100 * r["accuracy"], s=36, zorder=3)
        ax.annotate(r["model"], (r["macs"] / 1e6, 100 * r["accuracy"]), fontsize=8, xytext=(6, 5),
                    textcoords="offset points", zorder=4)
    search = summary.get("search") or {}
    if len(rows) == 3 and search.get("path"):
        # the levels the search tried: its held-back loss read against the accuracy of the base told the classes
        told, base_macs = 100 * rows[1]["accuracy"], rows[0]["macs"]
        pts = sorted((base_macs / p["mac_reduction"] / 1e6, told - p["loss_pp"], p["accepted"]) for p in search["path"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.6", lw=1, zorder=1)
        for x, y, ok in pts:
            ax.scatter(x, y, marker="o" if ok else "x", color="0.4", s=20, zorder=2)
        ax.plot([], [], color="0.6", marker="o", lw=1,
                label="the search's levels, estimated: the told base's accuracy\nless each level's loss on held-back "
                      "frames (x: over budget)")
        ax.legend(fontsize=7, loc="lower right")
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("MACs per frame (M)")
    ax.set_ylabel(f"accuracy on classes {summary['classes']} (%)")
    ax.set_title("Accuracy against cost", fontsize=10)
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
             "CPU, and the last column the execution providers ocapd served each model on. In the plot of "
             "predictions, the classes outside the observed ones drop to zero while the personalized model serves: "
             "it answers only those; the base, back after the drift, answers all.", "",
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
            lines.append(f"| {e['ts'] - t0:.0f} | {e['kind']} | {cut_words(detail)} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
