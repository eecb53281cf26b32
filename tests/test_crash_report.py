"""A native crash in one test does not end the suite (issue 24): run as ``scripts/test.sh`` runs it
(pytest-xdist workers and ``tests/crash_report.py``), a test that dies of SIGSEGV or SIGABRT is reported
as that test failing, naming the signal, and the tests after it still run."""

import sys
import textwrap

import pytest

from tests.crash_report import describe_crash
from tests.helpers import ROOT, captured, subprocess_env

CRASHING = '''
import ctypes, os

def test_before():
    assert True

def test_segfault():
    ctypes.string_at(0)          # reads address 0: SIGSEGV, as a bad native kernel would

def test_abort():
    os.abort()                   # glibc's "free(): invalid next size" ends this way

def test_after():
    assert True
'''


def test_a_native_crash_fails_that_test_and_the_suite_goes_on(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.crash_report"]\n')
    (tmp_path / "test_crashing.py").write_text(textwrap.dedent(CRASHING))
    run = captured([sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-rf",
                    str(tmp_path)], cwd=str(tmp_path),
                   env=subprocess_env(), timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "2 failed, 2 passed" in out, out
    assert "killed by SIGSEGV (signal 11): the test process died in test_crashing.py::test_segfault" in out, out
    assert "killed by SIGABRT (signal 6): the test process died in test_crashing.py::test_abort" in out, out
    assert "Fatal Python error: Segmentation fault" in out and "in test_segfault" in out, out   # the stack
    assert str(ROOT) not in str(tmp_path)


@pytest.mark.parametrize("status,report,words", [
    (-11, "", "killed by SIGSEGV (signal 11)"),
    (None, "Fatal Python error: Aborted\n\nCurrent thread ...", "killed by SIGABRT"),
    (None, "", "died without a report (SIGKILL, or the OOM killer)"),
    (3, "", "exited with code 3 without a report"),
])
def test_the_crash_is_named_from_the_exit_status_or_the_fault_report(status, report, words):
    assert describe_crash(status, report) == words
