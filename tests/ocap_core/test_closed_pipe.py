"""``ocap eval ... | head -1`` ended in a BrokenPipeError traceback: the command-line tools exit quietly
(141, as a shell reports for SIGPIPE, or 0) when their stdout reader has gone."""

import subprocess
import sys

import numpy as np
import pytest

from ocap_core.closed_pipe import EXIT_CLOSED_PIPE
from tests import helpers
from tests.helpers import ROOT, captured


def run_into_closed_pipe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` (this checkout importable) into a pipe whose reader is gone."""
    return helpers.run_into_closed_pipe([sys.executable, *args], timeout=timeout, cwd=str(ROOT),
                                        env=helpers.subprocess_env())


def _quiet(r: subprocess.CompletedProcess) -> None:
    assert r.returncode in (0, EXIT_CLOSED_PIPE), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr and "Exception ignored" not in r.stderr, \
        r.stderr


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    from ocap_core.data import load_dataset

    test = load_dataset("fashion-mnist", "test")
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, x=test.x[:50, :, :, 0], y=test.y[:50])
    return str(path)


@pytest.mark.parametrize("json_out", [False, True])
def test_ocap_eval_into_a_closed_pipe(small_npz, json_out):
    r = run_into_closed_pipe("-m", "ocap_core", "eval", "--model", "fmnist-cnn", "--data", small_npz, "--split", "all",
                             "--latency-runs", "0", *(["--json"] if json_out else []))
    _quiet(r)
    assert r.returncode == EXIT_CLOSED_PIPE


@pytest.mark.parametrize("args", [["models"], ["--help"], ["eval", "--help"]])
def test_ocap_listings_and_help_into_a_closed_pipe(args):
    _quiet(run_into_closed_pipe("-m", "ocap_core", *args))   # argparse's help swallows the error itself: 0


def test_ocapd_into_a_closed_pipe(tmp_path):
    ini = tmp_path / "ocap.ini"
    ini.write_text("")                        # the defaults: a valid file
    r = run_into_closed_pipe("-m", "ocap_daemon.main", "--config", str(ini), "--check-config")
    _quiet(r)
    assert r.returncode == EXIT_CLOSED_PIPE
    _quiet(run_into_closed_pipe("-m", "ocap_daemon.main", "--help"))


def test_an_open_pipe_gets_everything_and_exit_0(small_npz):
    r = captured([sys.executable, "-m", "ocap_core", "eval", "--model", "fmnist-cnn", "--data", small_npz,
                  "--split", "all", "--latency-runs", "0"], cwd=str(ROOT), env=helpers.subprocess_env(), timeout=300)
    assert r.returncode == 0 and "on 50 images (the whole data set)" in r.stdout, r.stdout + r.stderr
