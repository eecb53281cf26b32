"""Issue 14: the Notifier reads systemd's variables and unsets them (sd_notify's ``unset_environment``),
so a child process such as the personalization worker never inherits ``NOTIFY_SOCKET``."""

import json
import os
import socket
import sys

from ocap_daemon.notify import ENV_KEYS, Notifier
from ocap_daemon.supervisor import worker_env
from tests.helpers import captured


def test_a_child_started_after_the_notifier_does_not_see_notify_socket(tmp_path, monkeypatch):
    addr = f"@ocap-notify-test-{os.getpid()}"         # abstract namespace: no socket path length limit
    monkeypatch.setenv("NOTIFY_SOCKET", addr)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + addr[1:])
        listener.settimeout(30)
        n = Notifier()
        assert n.address == addr and n.watchdog_seconds == 0.4

        code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {list(ENV_KEYS)!r}}}))"
        out = captured([sys.executable, "-c", code], check=True, timeout=60)
        assert json.loads(out.stdout) == {k: None for k in ENV_KEYS}
        assert not set(ENV_KEYS) & set(worker_env(tmp_path / "job"))

        assert n.ready("serving")                     # the Notifier itself still reaches systemd
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving"
