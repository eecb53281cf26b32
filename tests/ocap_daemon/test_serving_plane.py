"""The control plane's policy talks to serving through the narrow face ocap_daemon/serving_plane.py lists:
its modules use no other attribute of the server (read from their source), the real Server has every
member, and the stand-in the policy's unit tests use implements what the trigger needs."""

import re

import pytest

from ocap_daemon.serving_plane import MEMBERS
from ocap_service.server import Server
from tests.helpers import ROOT

POLICY = ["controller", "trigger", "deployer", "status", "metrics", "precision", "gate", "watch", "telemetry"]


@pytest.mark.parametrize("module", POLICY)
def test_the_policy_uses_only_the_narrow_face(module):
    text = (ROOT / "ocap_daemon" / f"{module}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"\bserver\.([a-z_]+)", text))
    assert used <= set(MEMBERS), sorted(used - set(MEMBERS))


def test_the_server_has_every_member():
    missing = [m for m in MEMBERS if m != "base" and not hasattr(Server, m)]
    assert missing == []
    assert "        self.base = " in (ROOT / "ocap_service" / "server.py").read_text(encoding="utf-8")  # an attribute
