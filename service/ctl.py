"""``ocapctl``: talk to the daemon's control socket. Human output by default, ``--json`` for scripts.
Exit codes: 0 ok, 1 the command failed, 2 usage error, 3 the daemon is unreachable."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_SOCKET = "/run/ocap/ocap.sock"


def _human(cmd: str, res: Dict[str, Any]) -> str:
    if cmd == "classes":
        rows = res["classes"]
        total = sum(r["n"] for r in rows) or 1
        width = max([len(r["class_name"]) for r in rows] + [5])
        lines = [f"last {res['minutes']} min, {res['origin']}: {total if rows else 0} predictions"]
        for r in rows:
            bar = "#" * int(round(40 * r["n"] / total))
            lines.append(f"{r['class_id']:>3} {r['class_name']:<{width}} {r['n']:>8} {100 * r['n'] / total:5.1f}% {bar}")
        return "\n".join(lines)
    if cmd == "status":
        m = res["model"]
        lat = res["latency_ms"]
        return "\n".join([f"model     {m['name']} ({m['version']}), classes {m['class_ids']}",
                          f"providers {', '.join(m['providers'])}",
                          f"uptime    {res['uptime_s']:.0f} s, {res['requests']} requests",
                          f"latency   p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms",
                          f"cache     {sum(res['cache']['train'].values())} train + "
                          f"{sum(res['cache']['val'].values())} val samples, {res['cache_bytes']} bytes"])
    if cmd == "predict":
        return f"{res['class_id']} {res['class_name']} ({res['confidence']:.3f}) by {res['model_version']}"
    return json.dumps(res, indent=2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ocap_core.data import read_image
    from ocap_core.errors import OcapError

    from .client import Client, CommandFailed, Unreachable

    ap = argparse.ArgumentParser(prog="ocapctl", description=__doc__)
    ap.add_argument("--socket", default=DEFAULT_SOCKET)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    c = sub.add_parser("classes")
    c.add_argument("--minutes", type=int, default=60)
    c.add_argument("--origin", default="served", choices=["served", "teacher"])
    sub.add_parser("models")
    h = sub.add_parser("history")
    h.add_argument("--limit", type=int, default=50)
    p = sub.add_parser("predict")
    p.add_argument("file", help="an image file (PNG, JPEG, PGM, ...) or a uint8 .npy array")
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
            elif args.cmd == "classes":
                res = client.call("classes", minutes=args.minutes, origin=args.origin)
            elif args.cmd == "history":
                res = client.call("history", limit=args.limit)
            else:
                res = client.call(args.cmd)
    except Unreachable as e:
        print(f"ocapctl: daemon unreachable: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandFailed as e:
        print(f"ocapctl: {args.cmd} failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(res, indent=2) if args.json else _human(args.cmd, res))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
