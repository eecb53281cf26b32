"""Start ``ocapd`` (or the serving plane alone, ``python -m ocap_service``) as a subprocess and wait until it
answers: the one way ``ocap demo``, the benchmarks and the tests run a daemon. ``start_ocapd`` returns a
``DaemonProcess`` handle (the process, its socket, its log, ``request``, ``events``, ``stop``) once the
socket answers ``status``, or raises naming the command and the end of the daemon's log. Every wait
here is a condition with a deadline (``wait_until``), never a fixed sleep: on a busy 2-core device
start-up takes many seconds."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar, Union

from ocap_service.client import Client, ServiceError

from .errors import DaemonError

log = logging.getLogger(__name__)
T = TypeVar("T")
# the directory that holds the daemon package (a checkout or site-packages): ocapd runs from it
CODE_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def wait_until(condition: Callable[[], Optional[T]], timeout: float, what: str, interval: float = 0.2) -> T:
    """The first truthy value of ``condition()``, polled every ``interval`` seconds; TimeoutError saying
    ``what`` was awaited once ``timeout`` seconds have passed. An exception of ``condition`` (the
    daemon died) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


class DaemonProcess:
    """A running ``ocapd`` or ``python -m ocap_service``: ``proc``, ``socket`` and ``log`` (its stderr);
    ``request`` sends one command, ``events`` reads the event history, ``stop`` ends it with SIGTERM.
    A context manager that stops the daemon on exit."""

    def __init__(self, proc: subprocess.Popen, what: str, socket: Path, log_path: Path, log_file: IO[str]) -> None:
        self.proc, self.what, self.socket, self.log = proc, what, socket, log_path
        self._log_file = log_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def request(self, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
        """One control command on a connection of its own; its result (``ServiceError`` otherwise)."""
        with Client(self.socket, timeout=timeout) as c:
            return c.call(cmd, **args)

    def events(self, limit: int = 500) -> List[Dict[str, Any]]:
        """The daemon's latest ``limit`` events (``history``), oldest first."""
        return list(reversed(self.request("history", limit=limit)["events"]))

    def answers(self) -> bool:
        """Whether the socket answers ``status`` now."""
        try:
            self.request("status", timeout=10.0)
            return True
        except (ServiceError, OSError):
            return False

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError as e:
            return f"(cannot read {self.log}: {e})"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait up to ``timeout`` s for the exit (SIGKILL past it, with a warning): its
        exit status (0 for a clean stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop within %g s of SIGTERM; killed", self.what, self.pid,
                            timeout)
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL (a power cut, as far as the daemon can tell) and reap: its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()
        return self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_ocapd(config: Union[str, Path], socket: Union[str, Path], log_path: Union[str, Path],
                env: Optional[Mapping[str, str]] = None, timeout: float = START_TIMEOUT) -> DaemonProcess:
    """``ocapd --config CONFIG`` (``python -m ocap_daemon.main``) from this checkout or installation, once
    ``socket`` (the config's ``[daemon] socket``) answers; see ``start_daemon``."""
    return start_daemon(["ocap_daemon.main", "--config", str(config)], socket, log_path, env, timeout)


def start_daemon(module_args: Sequence[str], socket: Union[str, Path], log_path: Union[str, Path],
                 env: Optional[Mapping[str, str]] = None, timeout: float = START_TIMEOUT) -> DaemonProcess:
    """``python -m MODULE ARGS...`` (``module_args``) from this checkout or installation, its stderr
    appended to ``log_path``, ``env`` added to the environment; returns once ``socket`` answers
    ``status``. DaemonError naming the command and the log's end when the process exits first or does
    not answer within ``timeout`` seconds (it is killed then)."""
    socket, log_path = Path(socket), Path(log_path)
    what = "python -m " + " ".join(module_args)
    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), environ.get("PYTHONPATH", "")) if p)
    log_file = open(log_path, "a", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", *module_args], stderr=log_file, env=environ)
    daemon = DaemonProcess(proc, what, socket, log_path, log_file)

    def ready() -> bool:
        if proc.poll() is not None:
            raise DaemonError(f"{what} exited with status {proc.returncode} before answering on {socket}; "
                              f"its log {log_path} ends:\n{daemon.log_tail()}")
        return daemon.answers()

    try:
        wait_until(ready, timeout, f"{what} to answer status on {socket}")
    except TimeoutError as e:
        daemon.kill()
        raise DaemonError(f"{e}; its log {log_path} ends:\n{daemon.log_tail()}") from None
    except BaseException:
        daemon.kill()
        raise
    return daemon
