"""pytest plugin (loaded by tests/conftest.py): a test that kills its process with a native crash is
reported as that test failing, with its name, the signal and the Python stack where it died, and the
rest of the suite still runs.

It works with pytest-xdist (``-n``, as ``scripts/test.sh`` runs): each worker writes faulthandler's
report (``Fatal Python error: Segmentation fault`` and every thread's stack) to a file of its own; when a
worker dies, xdist replaces it and reports the test it was running as failed, and this plugin puts the
worker's exit signal and that report into the failure. Without ``-n`` a crash still ends the run, as it
does in plain pytest."""

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest

_DIR_KEY = "ocap_crash_dir"
_FATAL = {       # faulthandler's words -> the signal, when the exit status cannot be read
    "Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE", "Illegal instruction": "SIGILL",
}


@pytest.hookimpl(trylast=True)       # after pytest's own faulthandler plugin, which writes to stderr
def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        if _DIR_KEY in workerinput:
            import faulthandler

            path = Path(workerinput[_DIR_KEY]) / f"{workerinput['workerid']}.log"
            config._ocap_fault_file = open(path, "w")          # noqa: SIM115 (open while the worker lives)
            faulthandler.enable(file=config._ocap_fault_file, all_threads=True)
    elif config.pluginmanager.hasplugin("xdist"):
        config._ocap_crash_dir = tempfile.mkdtemp(prefix="ocap-test-crashes-")


def pytest_unconfigure(config: pytest.Config) -> None:
    crash_dir = getattr(config, "_ocap_crash_dir", None)
    if crash_dir:
        shutil.rmtree(crash_dir, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    crash_dir = getattr(node.config, "_ocap_crash_dir", None)
    if crash_dir:
        node.workerinput[_DIR_KEY] = crash_dir


def _exit_status(node: Any) -> Optional[int]:
    """The dead worker's exit status (negative: the signal), read from execnet's process handle."""
    try:
        return node.gateway._io.popen.wait(timeout=10)
    except Exception:  # another gateway kind, or execnet changed: the fault report still names it
        return None


def describe_crash(status: Optional[int], fault_report: str) -> str:
    """``killed by SIGSEGV (signal 11)``, from the exit status, or from faulthandler's first line."""
    if status is not None and status < 0:
        from tests.helpers import exit_description

        return exit_description(status)
    for words, name in _FATAL.items():
        if f"Fatal Python error: {words}" in fault_report:
            return f"killed by {name}"
    if status is not None:
        return f"exited with code {status} without a report"
    return "died without a report (SIGKILL, or the OOM killer)"


_HARNESS = ("/_pytest/", "/pluggy/", "/xdist/", "/execnet/", 'File "<string>"')


def own_frames(fault_report: str) -> str:
    """faulthandler's report without the frames of pytest, pluggy, xdist and execnet."""
    return "\n".join(line for line in fault_report.splitlines() if not any(h in line for h in _HARNESS))


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: Any, sched: Any) -> None:
    node = getattr(report, "node", None)
    crash_dir = getattr(getattr(node, "config", None), "_ocap_crash_dir", None)
    text = ""
    if crash_dir and node is not None:
        log = Path(crash_dir) / f"{node.gateway.id}.log"
        try:
            text = log.read_text(errors="replace").strip()
        except OSError:
            pass
    how = describe_crash(_exit_status(node) if node is not None else None, text)
    report.longrepr = (f"{how}: the test process died in {crashitem}; the suite went on in a new worker\n"
                       + (own_frames(text) or "(no Python stack was written)"))
    report.sections.append(("native crash", how))
