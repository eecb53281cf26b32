"""Build the ``ocap`` parser from each package's commands and run the chosen one (``ocap ...``,
``python -m ocap_cli ...``). Parsing, logging set-up and error handling are ``ocap_core.cli.main``'s."""

import argparse
from typing import Any, Optional, Sequence

from ocap_core import cli as core_cli
from ocap_core.errors import OcapError


def _add_bench(sub: Any) -> None:
    """``ocap bench`` from the bench/ folder of a source checkout; an installed ocap (no bench/) keeps the
    command, which says where to run it."""
    try:
        from bench.cli import add_commands
    except ImportError as e:
        reason = f"`ocap bench` runs from a source checkout (the bench/ folder is not installed): {e}"

        def unavailable(args: argparse.Namespace) -> int:
            raise OcapError(reason)

        core_cli.add_command(sub, "bench", lambda p: p.add_argument("args", nargs=argparse.REMAINDER),
                             unavailable, "run a benchmark (from a source checkout)")
        return
    add_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    """Every ``ocap`` command: the algorithms', then bench, then demo."""
    from ocap_daemon.demo import add_commands as add_demo

    parser, sub = core_cli.new_parser("ocap offline tools")
    core_cli.add_commands(sub)
    _add_bench(sub)
    add_demo(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ocap``: exit 0 on success, 1 with one line on a failure, 2 on a usage error."""
    return core_cli.main(argv, build=build_parser)
