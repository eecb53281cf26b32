"""Helpers shared by tests (import as ``from tests.helpers import ...``)."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Tuple, TypeVar

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["fmnist-cnn", "fmnist-mobilenetv2", "fmnist-resnet20", "fmnist-vgg"]
TARGETS = {"fmnist-cnn": 0.91, "fmnist-resnet20": 0.925, "fmnist-mobilenetv2": 0.92, "fmnist-vgg": 0.925}
WAIT_S = 60.0               # only a failing test waits this long: a loaded 2-core machine is slow, not stuck

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = WAIT_S, interval: float = 0.05,
               what: str = "the condition") -> T:
    """Call ``predicate`` until it returns something truthy, and return that. Tests wait on the state
    they need instead of sleeping for a time a busy machine may outlast; the deadline is generous
    because only a failure reaches it, and then the AssertionError names ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what} in vain")
        time.sleep(interval)


def subprocess_env() -> dict:
    """The environment for a subprocess that imports this checkout's packages."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def answers(sock: Path) -> bool:
    """Whether something accepts connections on the control socket ``sock``."""
    from service.client import Client, Unreachable

    try:
        Client(sock).close()
    except Unreachable:
        return False
    return True


def serve(state_dir: Path, sock: Path, *args: str) -> Tuple[subprocess.Popen, Path]:
    """``python -m service ARGS`` on ``state_dir`` and ``sock``, returned once it answers there (a stale
    socket file from a killed one may be there before); its stderr is in the failure if it exits."""
    proc = subprocess.Popen([sys.executable, "-m", "service", "--state-dir", str(state_dir), "--socket", str(sock),
                             *args], cwd=str(ROOT), env=subprocess_env(), stderr=subprocess.PIPE, text=True)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"python -m service exited with {proc.returncode}: {proc.stderr.read()}")
        return answers(sock)

    try:
        wait_until(up, interval=0.1, what=f"python -m service to answer on {sock}")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    return proc, sock


def run_cli(*args: str, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``ocap ARGS`` (``python -m ocap_cli``) as a real subprocess from the repository root."""
    full_env = subprocess_env()
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ocap_cli", *args], capture_output=True, text=True,
                          cwd=str(ROOT), env=full_env, timeout=timeout)
