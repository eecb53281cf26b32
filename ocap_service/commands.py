"""The control socket's commands, declared once: name, arguments, whether it changes state (checked
against the peer's credentials), whether raw bytes follow the request line, whether only ``ocapd``
answers it (the control plane's commands; the serving plane alone, ``python -m ocap_service``, does not), and
one line of help. ``ControlServer`` takes handlers only for names declared here and dispatches by this
table; ``ocapctl`` builds its parser and help from it; a test checks the README's list against it."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

from .errors import ServiceError


@dataclass(frozen=True)
class Arg:
    """One argument: a request key and ``ocapctl``'s ``--name`` (dashes for underscores), or, when
    ``positional``, an input ``ocapctl`` reads itself and does not send (a file, a directory)."""

    name: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    choices: Tuple[str, ...] = ()
    flag: bool = False                  # a switch: --now
    positional: bool = False


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    args: Tuple[Arg, ...] = ()
    mutating: bool = False              # needs root, the daemon's user or [daemon] group
    payload: bool = False               # a header's "bytes": N raw bytes follow the line
    ocapd_only: bool = False            # the control plane answers it, not the serving plane alone
    exclusive: bool = False             # its flags exclude each other
    client_side: bool = False           # ocapctl does it with other commands; the socket has no such command


COMMANDS: Tuple[Command, ...] = (
    Command("status", "the served model, requests and latency, the cache, the daemon's phase"),
    Command("classes", "predictions per class over the last minutes", (
        Arg("minutes", "how many minutes back", int, 60),
        Arg("origin", "whose predictions: the served model's or the teacher's checks", str, "served",
            ("served", "teacher")))),
    Command("models", "the stored model versions: current, last good, base"),
    Command("history", "the latest events: personalizations, gates, deploys, rollbacks, drift", (
        Arg("limit", "how many events", int, 50),)),
    Command("metrics", "the daemon's metrics as OpenMetrics text (for Prometheus; see README, Metrics)", (
        Arg("format", "openmetrics, or the Prometheus text format that node_exporter's textfile reads", str,
            "openmetrics", ("openmetrics", "prometheus")),)),
    Command("predict", "classify one image file through the daemon", (
        Arg("file", "an image file (PNG, JPEG, PGM, ...) or a uint8 .npy array", positional=True),), payload=True),
    Command("forget-samples", "delete every cached sample", mutating=True),
    Command("personalize", "start a personalization when the trigger allows", (
        Arg("now", "start even if the classes are not stable yet", flag=True, default=False),
        Arg("dry_run", "only say whether one would start, and why", flag=True, default=False)),
        mutating=True, ocapd_only=True, exclusive=True),
    Command("rollback", "go back to the last good model, or the base model", mutating=True, ocapd_only=True),
    Command("pause", "pause personalization (a running worker is stopped with SIGSTOP)", mutating=True,
            ocapd_only=True),
    Command("resume", "resume personalization", mutating=True, ocapd_only=True),
    Command("reload", "re-read the config file", mutating=True, ocapd_only=True),
    Command("report", "write a Markdown report of the daemon's state to a directory", (
        Arg("out", "directory for report.md", positional=True),), client_side=True),
)
BY_NAME: Dict[str, Command] = {c.name: c for c in COMMANDS}


def command(name: str) -> Command:
    """The declared command ``name`` (a socket command, not ``ocapctl``'s client-side ones)."""
    c = BY_NAME.get(name)
    if c is None or c.client_side:
        raise ServiceError(f"no control command {name!r} is declared in ocap_service/commands.py; declared: "
                           f"{', '.join(c.name for c in COMMANDS if not c.client_side)}")
    return c


def request_args(c: Command, values: Dict[str, Any]) -> Dict[str, Any]:
    """The request's keys for ``c`` from parsed values (``ocapctl``'s), leaving out its local inputs."""
    return {a.name: values[a.name] for a in c.args if not a.positional}
