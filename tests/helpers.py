"""Helpers shared by tests (import as ``from tests.helpers import ...``)."""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Tuple, TypeVar

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["fmnist-cnn", "fmnist-mobilenetv2", "fmnist-resnet20", "fmnist-vgg"]
TARGETS = {"fmnist-cnn": 0.91, "fmnist-resnet20": 0.925, "fmnist-mobilenetv2": 0.92, "fmnist-vgg": 0.925}
WAIT_S = 60.0               # only a failing test waits this long: a loaded 2-core machine is slow, not stuck

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = WAIT_S, interval: float = 0.05,
               what: str = "the condition") -> T:
    """``ocap_daemon.launch.wait_until`` for tests: the first truthy value of ``predicate``, or an
    AssertionError naming ``what`` was awaited. Tests wait on the state they need instead of sleeping
    for a time a busy machine may outlast; the deadline is generous because only a failure reaches it."""
    from ocap_daemon.launch import wait_until as launch_wait

    try:
        return launch_wait(predicate, timeout, what, interval)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


def captured(args, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` with stdout and stderr captured as text (``capture_output=``/``text=`` are
    Python 3.7+; the torch-free tests also run on JetPack 4.6's 3.6)."""
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, **kwargs)


def captured_bytes(args, **kwargs) -> subprocess.CompletedProcess:
    """``captured`` as bytes."""
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def subprocess_env() -> dict:
    """The environment for a subprocess that imports this checkout's packages."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def serve(state_dir: Path, sock: Path, *args: str) -> Tuple[subprocess.Popen, Path]:
    """``python -m ocap_service ARGS`` on ``state_dir`` and ``sock`` (``ocap_daemon.launch.start_daemon``), returned
    once it answers there; its log, in the failure if it exits first, is ``state_dir/service.log``."""
    from ocap_daemon.launch import start_daemon

    Path(state_dir).mkdir(parents=True, exist_ok=True)
    daemon = start_daemon(["ocap_service", "--state-dir", str(state_dir), "--socket", str(sock), *args], sock,
                          Path(state_dir) / "service.log", timeout=WAIT_S)
    return daemon.proc, sock


def run_cli(*args: str, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``ocap ARGS`` (``python -m ocap_cli``) as a real subprocess from the repository root."""
    full_env = subprocess_env()
    full_env.update(env or {})
    return captured([sys.executable, "-m", "ocap_cli", *args], cwd=str(ROOT), env=full_env, timeout=timeout)


def run_into_closed_pipe(args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``args`` with stdout a pipe whose only reader is closed before the child writes a byte (as
    ``head -1`` once it has its line); stderr captured as text. (Closing ``Popen.stdout`` instead breaks
    ``communicate`` on Python 3.6.)"""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.Popen(args, stdout=write_end, stderr=subprocess.PIPE, **kwargs)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err.decode("utf-8", "replace"))


def exit_description(returncode: int) -> str:
    """How a process ended, in words: ``exit code 1``, or ``killed by SIGSEGV (signal 11)``."""
    from ocap_daemon.supervisor import signal_name  # the name the daemon gives a dead worker's signal

    if returncode < 0:
        return f"killed by {signal_name(-returncode)} (signal {-returncode})"
    return f"exit code {returncode}"


class ChildRun(subprocess.CompletedProcess):
    """A finished child process; ``failure`` says how it ended and what it wrote, for an assert message."""

    @property
    def failure(self) -> str:
        return f"child {exit_description(self.returncode)}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}"


def run_python(code: str, *args: str, env=None, timeout: float = 600) -> ChildRun:
    """Run ``code`` in a fresh Python (this checkout importable, ``args`` as ``sys.argv[1:]``), so that a
    native crash (SIGSEGV, SIGABRT from glibc) fails the calling test instead of ending the test run."""
    full_env = subprocess_env()
    full_env.update(env or {})
    run = captured([sys.executable, "-X", "faulthandler", "-c", code, *args], cwd=str(ROOT), env=full_env,
                   timeout=timeout)
    return ChildRun(run.args, run.returncode, run.stdout, run.stderr)


def cli(*args: str) -> subprocess.CompletedProcess:
    """``ocap ARGS`` in this process (``ocap_cli.main``), for refusals and other quick answers: the same
    parser, handlers and exit codes as ``run_cli`` without a Python and torch to start (seconds each).
    Runs that train stay in ``run_cli``'s subprocess (torch's thread count is per process)."""
    import contextlib
    import io

    from ocap_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:                     # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(["ocap", *args], code, out.getvalue(), err.getvalue())


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The directory ``build(directory)`` filled, built once per test run: under pytest-xdist the first
    worker to ask builds it while the others wait on a lock and then reuse it (a module fixture is
    otherwise built again by every worker that runs one of the module's tests). Treat it as read-only."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    target = root / f"once-{name}"
    with open(root / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".built").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (target / ".built").touch()
    return target
