"""``ocapctl``: talk to the daemon's control socket. Human output by default, ``--json`` for scripts.
Exit codes: 0 ok, 1 the command failed, 2 usage error, 3 the daemon is unreachable."""

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ocap_core import strict_json

from .commands import BY_NAME, COMMANDS, request_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_SOCKET = "/run/ocap/ocap.sock"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(rows: List[List[str]]) -> List[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _providers(m: Dict[str, Any]) -> str:
    """What a model runs on, and what it asked for when it got less (the fallback's reason)."""
    got = ", ".join(m["providers"])
    if not m.get("fallback"):
        return got
    return f"{got} (asked for {', '.join(m.get('asked') or [])}: {m['fallback']})"


def _status(res: Dict[str, Any]) -> str:
    m, lat, rate = res["model"], res["latency_ms"], res["rate_per_s"]
    fill = {k: n for k, n in res["cache"]["train"].items()}
    lines = [f"model     {m['name']} ({m['version']}), classes {m['class_ids']}, {m['swaps']} swaps",
             f"providers {_providers(m)}",
             f"uptime    {res['uptime_s']:.0f} s, {res['requests']} requests ({res['failed']} failed), "
             f"{rate['10s']:.1f}/s last 10 s, {rate['60s']:.1f}/s last minute"]
    fb = res.get("fallback")
    if fb:
        share = "no frames yet" if fb["share"] is None else f"{100 * fb['share']:.1f}% of {fb['frames']} frames"
        per = ", ".join(f"{k}:{100 * c['fell_back'] / c['frames']:.0f}%" for k, c in fb["per_class"].items() if c["frames"])
        lines.append(f"fallback  base answers below confidence {fb['tau']:.3f}: {share} in the last {fb['minutes']} min"
                     + (f" (per class {per})" if per else ""))
    if lat["p50"] is not None:
        lines.append(f"latency   p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms")
    t = res.get("teacher")
    if t:
        share = t["disagreed"] / t["inside"] if t["inside"] else 0.0
        on = f" on {', '.join(t['providers'])}" if t.get("providers") else ""
        lines.append(f"teacher   {t['version']}{on} checks {100 * t['share']:.0f}% of frames: {t['checked']} checked, "
                     f"{t['checked'] - t['inside']} outside the served classes, {100 * share:.1f}% of the rest disagree")
    lines.append(f"cache     per class {', '.join(f'{k}:{n}' for k, n in sorted(fill.items(), key=lambda kv: int(kv[0])))}"
                 f" of {res['cache_per_class']} (+{sum(res['cache']['val'].values())} held back), "
                 f"{res['cache_bytes'] / 2 ** 20:.1f} of {res['cache_quota'] / 2 ** 20:.0f} MiB")
    if res.get("daemon"):
        lines.append(f"daemon    {res['daemon']['status_line']}")
    metrics = res.get("metrics") or {}
    if metrics.get("error"):
        lines.append(f"metrics   textfile {metrics['textfile']} not written: {metrics['error']}")
    if res.get("last_flush"):
        lines.append(f"flushed   {_when(res['last_flush'])}")
    return "\n".join(lines)


def _classes(res: Dict[str, Any]) -> str:
    rows = res["classes"]
    total = sum(r["n"] for r in rows)
    lines = [f"last {res['minutes']} min, {res['origin']}: {total} predictions"]
    width = max([len(r["class_name"]) for r in rows] + [5])
    for r in rows:
        share = r["n"] / total if total else 0.0
        lines.append(f"{r['class_id']:>3} {r['class_name']:<{width}} {r['n']:>8} {100 * share:5.1f}% "
                     + "#" * int(round(40 * share)))
    return "\n".join(lines)


def _models(res: Dict[str, Any]) -> str:
    rows = [["version", "status", "classes", "MACs", "served"]]
    for m in res["models"]:
        served = m.get("served") or {}
        rows.append([m["version"], m["status"], ",".join(map(str, m["class_ids"])),
                     f"{m['macs'] / 1e6:.1f}M" if m.get("macs") else "-", str(served.get("n", 0))])
    return "\n".join(_table(rows))


def _history(res: Dict[str, Any]) -> str:
    if not res["events"]:
        return "no events"
    return "\n".join(_table([["time", "event", "detail"]] + [
        [_when(e["ts"]), e["kind"], " ".join(f"{k}={v}" for k, v in e["detail"].items())] for e in res["events"]]))


def _human(cmd: str, res: Dict[str, Any]) -> str:
    if cmd == "predict":
        return f"{res['class_id']} {res['class_name']} ({res['confidence']:.3f}) by {res['model_version']}"
    if cmd == "report":
        return f"wrote {res['report']}"
    if cmd == "metrics":
        return res["text"].rstrip("\n")
    if cmd == "forget-samples":
        return f"forgot {res['forgotten']} cached samples"
    if cmd == "personalize":
        if "would_start" in res:
            return f"{'would start' if res['would_start'] else 'would not start'}: {res['reason']} (classes {res['classes']})"
        return f"personalization started for classes {res['classes']} (worker pid {res['pid']})"
    show = {"status": _status, "classes": _classes, "models": _models, "history": _history}.get(cmd)
    return show(res) if show else strict_json.dumps(res, indent=2)


def write_report(client: Any, out: Path) -> Path:
    """A Markdown snapshot of the daemon: status, models, the last day's class histogram, events."""
    status = client.call("status")
    models = client.call("models")
    classes = client.call("classes", minutes=1440)
    events = client.call("history", limit=500)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# ocap report, {_when(time.time())}", "", "## Status", "", "```", _status(status), "```", "",
             "## Models", "", "```", _models(models), "```", "", "## Classes, last 24 h (served)", "", "```",
             _classes(classes), "```", "", "## Events", "", "```", _history(events), "```"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ocapctl``; quiet (exit 141) when stdout is a pipe closed early (``ocapctl history | head -1``)."""
    from ocap_core.closed_pipe import quiet_on_closed_pipe

    return quiet_on_closed_pipe(lambda: _main(argv))


def build_parser() -> argparse.ArgumentParser:
    """``ocapctl``'s parser, a subcommand per declared command (``ocap_service/commands.py``)."""
    ap = argparse.ArgumentParser(prog="ocapctl", description=(__doc__ or "").replace("``", ""))
    ap.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    # the same flags after the subcommand (`ocapctl classes --json`); SUPPRESS: absent there, the value
    # given before the subcommand (or its default) stays
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help="control socket (also before the command)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON (also before the command)")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True                    # (add_subparsers' required= is Python 3.7+)
    for c in COMMANDS:                     # one table: ocap_service/commands.py
        sp = sub.add_parser(c.name, parents=[common], help=c.help + (" (needs rights)" if c.mutating else ""),
                            description=c.help)
        group = sp.add_mutually_exclusive_group() if c.exclusive else sp
        for a in c.args:
            if a.positional:
                sp.add_argument(a.name, help=a.help)
            elif a.flag:
                group.add_argument("--" + a.name.replace("_", "-"), action="store_true", help=a.help)
            else:
                group.add_argument("--" + a.name.replace("_", "-"), type=a.type, default=a.default,
                                   choices=list(a.choices) or None, help=f"{a.help} (default {a.default})")
    return ap


def _main(argv: Optional[Sequence[str]]) -> int:
    from ocap_core.data import read_image
    from ocap_core.errors import OcapError

    from .client import Client, CommandFailed, Unreachable

    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    try:
        with Client(Path(args.socket)) as client:
            if args.cmd == "predict":
                try:
                    img = read_image(Path(args.file))
                except OcapError as e:
                    print(f"ocapctl: {e}", file=sys.stderr)
                    return EXIT_USAGE
                res = client.predict(img)
            elif args.cmd == "report":
                res = {"report": str(write_report(client, Path(args.out)))}
            else:
                res = client.call(args.cmd, **request_args(BY_NAME[args.cmd], vars(args)))
    except Unreachable as e:
        hint = " (is ocapd running? its [daemon] socket is what --socket takes)" if args.socket == DEFAULT_SOCKET else ""
        print(f"ocapctl: daemon unreachable: {e}{hint}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandFailed as e:
        print(f"ocapctl: {args.cmd} failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(strict_json.dumps(res, indent=2) if args.json else _human(args.cmd, res))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
