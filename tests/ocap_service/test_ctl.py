"""``ocapctl`` against a real ``python -m ocap_service`` socket: global flags work before and after the
subcommand (``ocapctl classes --json`` was refused), and a closed stdout pipe ends it quietly."""

import json
import os
import signal
import sys

import pytest

from ocap_core.closed_pipe import EXIT_CLOSED_PIPE
from tests.helpers import ROOT, captured, run_into_closed_pipe, serve, subprocess_env

READ_ONLY = ["status", "classes", "models", "history", "metrics"]


def _ctl(*args):
    return captured([sys.executable, "-m", "ocap_service.ctl", *args], cwd=str(ROOT),
                    env=subprocess_env(), timeout=60)


@pytest.fixture(scope="module")
def sock(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctl")
    proc, path = serve(tmp / "state", tmp / "ocap.sock")
    try:
        yield str(path)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("cmd", READ_ONLY)
def test_json_flag_before_or_after_the_subcommand(sock, cmd):
    before = _ctl("--socket", sock, "--json", cmd)
    after = _ctl(cmd, "--socket", sock, "--json")
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    a, b = json.loads(before.stdout), json.loads(after.stdout)
    assert set(a) == set(b)
    if cmd in ("classes", "models"):
        assert a == b


def test_flags_after_the_subcommand_override_the_ones_before(sock):
    r = _ctl("--socket", "/nonexistent/ocap.sock", "classes", "--minutes", "5", "--socket", sock, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["minutes"] == 5, r.stderr
    r = _ctl("--socket", sock, "models")           # no --json anywhere: the human table
    assert r.returncode == 0 and r.stdout.startswith("version"), r.stdout
    assert _ctl("--socket", "/nonexistent/ocap.sock", "status", "--json").returncode == 3


def test_the_parser_is_built_from_the_command_table(capsys):
    """Every declared command is a subcommand with its options, its help and the global flags; the
    help has no reST markup. In-process: ``main`` returns before it connects."""
    from ocap_service.commands import COMMANDS
    from ocap_service.ctl import main

    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "``" not in top
    for c in COMMANDS:
        assert c.name in top and c.help in " ".join(top.split())
        assert main([c.name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--json" in text and "--socket" in text, (c.name, text)
        for a in c.args:
            assert (a.name if a.positional else "--" + a.name.replace("_", "-")) in text, (c.name, a.name)
    assert main(["personalize", "--now", "--dry-run"]) == 2           # exclusive flags: a usage error
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_control_plane_command_on_the_serving_plane_says_it_needs_ocapd(sock):
    r = _ctl("--socket", sock, "personalize", "--dry-run")
    assert r.returncode == 1, r.stderr
    assert "personalize is answered by ocapd (the control plane); this socket is the serving plane alone" in r.stderr


@pytest.mark.parametrize("args", [["history"], ["--json", "status"], ["classes", "--json"]])
def test_a_closed_stdout_pipe_ends_ocapctl_quietly(sock, args):
    r = run_into_closed_pipe([sys.executable, "-m", "ocap_service.ctl", "--socket", sock, *args], timeout=60,
                             cwd=str(ROOT), env=subprocess_env())
    assert r.returncode == EXIT_CLOSED_PIPE and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, \
        r.stderr


def test_an_unreachable_daemon_on_the_default_socket_points_at_socket(tmp_path):
    from ocap_service.ctl import DEFAULT_SOCKET

    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"a daemon may be listening on {DEFAULT_SOCKET} here")
    r = captured([sys.executable, "-m", "ocap_service.ctl", "status"], cwd=str(ROOT), timeout=60)
    assert r.returncode == 3 and "is ocapd running?" in r.stderr and "--socket" in r.stderr, r.stderr
    r = captured([sys.executable, "-m", "ocap_service.ctl", "--socket", str(tmp_path / "none.sock"), "status"],
                 cwd=str(ROOT), timeout=60)
    assert r.returncode == 3 and "none.sock" in r.stderr and "is ocapd running?" not in r.stderr
