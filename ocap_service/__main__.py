"""``python -m ocap_service``: run the serving plane on its own (no control plane yet): serve a model,
log class counts, fill the sample cache, answer the control socket, optionally feed it from one input
source. The source flags are made from the source registry (``ocap_service.sources.SOURCES``): each option
of a type is a flag, as each is a key of an ocapd ``[source:NAME]`` section."""

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ocap_core.errors import OcapError
from ocap_core.package import Card
from ocap_core.runtime import resolve_providers

from .durations import SYNTAX
from .errors import ServiceError
from .sources import (
    DURATION,
    MIX,
    MIX_SYNTAX,
    SOURCES,
    Option,
    OptionError,
    RejectedFrames,
    Sink,
    SourceContext,
    ThreadSource,
    summary,
)

_KIND_NOTES = {MIX: MIX_SYNTAX, DURATION: SYNTAX}


def _dest(flag: str) -> str:
    return "source_" + flag[2:].replace("-", "_")


def _flag_uses() -> Dict[str, List[Tuple[str, Option]]]:
    """Each source flag and the (type, option) pairs that take it (``--rate``: replay and camera)."""
    uses: Dict[str, List[Tuple[str, Option]]] = {}
    for stype, cls in SOURCES.items():
        for o in cls.options:
            uses.setdefault(o.cli_flag, []).append((stype, o))
    return uses


def _option_help(o: Option) -> str:
    allowed = f"one of {', '.join(o.choices)}" if o.choices else _KIND_NOTES.get(o.kind, "")
    default = "required" if o.default is None else f"default {o.default or 'empty'}"
    return f"{o.help.rstrip('.')}{'; ' + allowed if allowed else ''}; {default}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ocap_service", description=__doc__)
    ap.add_argument("--model", default="fmnist-cnn", help="package name or directory")
    ap.add_argument("--base", help="the base (teacher) model when --model is a pruned one (default: --model)")
    ap.add_argument("--state-dir", required=True, help="ocap.db and the sample cache go here")
    ap.add_argument("--socket", required=True, help="control socket path")
    ap.add_argument("--providers", default="auto", help="onnxruntime providers in order, e.g. tensorrt,cuda,cpu "
                    "(cpu is added last when missing); auto: those onnxruntime offers, best first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flush-seconds", type=float, default=5.0)
    ap.add_argument("--teacher-share", type=float, default=0.1, help="share of frames the base model checks "
                    "while a pruned model serves")
    ap.add_argument("--cache-per-class", type=int, default=256, help="cached samples per class")
    ap.add_argument("--cache-quota-mb", type=float, default=256.0, help="byte quota of the sample cache, in MiB")
    ap.add_argument("--log-level", default="INFO")
    group = ap.add_argument_group("input source", "one source feeds the model; its options as for ocapd's "
                                                  "[source:NAME] keys")
    group.add_argument("--source", choices=["none", *SOURCES], default="none",
                       help="; ".join(f"{t}: {summary(cls).rstrip('.')}" for t, cls in SOURCES.items()))
    for flag, uses in _flag_uses().items():
        group.add_argument(flag, dest=_dest(flag), metavar=uses[0][1].name.upper(),
                           help="; ".join(f"{t}: {_option_help(o)}" for t, o in uses))
    return ap


def build_source(args: argparse.Namespace, card: Card, sink: Sink, rejects: RejectedFrames) -> Optional[ThreadSource]:
    """The source ``--source`` names, from its flags (``ServiceError`` naming the flag), or None."""
    given = {flag: getattr(args, _dest(flag)) for flag in _flag_uses() if getattr(args, _dest(flag)) is not None}
    cls = SOURCES.get(args.source)
    flags = {o.name: o.cli_flag for o in (cls.options if cls else ())}
    stray = sorted(set(given) - set(flags.values()))
    if stray:
        users = [t for t, _ in _flag_uses()[stray[0]]]
        raise ServiceError(f"{stray[0]} is not used by --source {args.source} (only by {', '.join(users)})")
    if cls is None:
        return None
    ctx = SourceContext(card, f"--base {args.base}" if args.base else f"--model {args.model}",
                        lambda key, value: f"{flags[key]} {value}")
    try:
        options = {}
        for o in cls.options:
            text = given.get(o.cli_flag, o.default)
            if text is None:
                raise ServiceError(f"--source {args.source} needs {o.cli_flag} {o.name.upper()}: {o.help}")
            options[o.name] = o.parse(text)
        checked = cls.check(cls.settle(options, Path(args.state_dir)), ctx)
    except OptionError as e:
        raise ServiceError(f"{flags[e.key]} {e.value}: {e.why}") from None
    return cls.create(checked, ctx, sink, rejects)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from .server import ServerConfig, build_server

    try:
        names = () if args.providers == "auto" else tuple(p.strip() for p in args.providers.split(","))
        config = ServerConfig(providers=resolve_providers(names), threads=args.threads,
                              flush_seconds=args.flush_seconds, teacher_share=args.teacher_share,
                              cache_per_class=args.cache_per_class, cache_quota=int(args.cache_quota_mb * 2 ** 20))
        server = build_server(args.model, Path(args.state_dir), Path(args.socket), config, base=args.base)
        source = build_source(args, server.base.card, server.infer, RejectedFrames(args.source, server.events))
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        server.start()
    except (OcapError, ServiceError) as e:
        print(f"python -m ocap_service: {e}", file=sys.stderr)
        return 1
    if source:
        source.start()
    logging.getLogger("ocap_service").info("serving %s; control socket %s", server.slot.current().version, args.socket)
    while not done.wait(0.5):
        pass
    if source:
        source.stop()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
