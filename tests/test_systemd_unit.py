"""The shipped unit file passes systemd's own offline checks where systemd-analyze exists."""

import shutil
import subprocess

import pytest

from tests.helpers import ROOT

UNIT = ROOT / "systemd" / "ocapd.service"


def _unit_with_existing_binary(tmp_path):
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/ocapd", "ExecStart=/bin/true")
    path = tmp_path / "ocapd.service"
    path.write_text(text)
    return path


HARDENING = ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateNetwork=yes",
             "RestrictAddressFamilies=AF_UNIX", "IPAddressDeny=any", "UMask=0027", "ProtectKernelTunables=yes",
             "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes",
             "ProtectHostname=yes", "RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
             "LockPersonality=yes", "RemoveIPC=yes", "SystemCallArchitectures=native",
             "SystemCallFilter=@system-service", "CapabilityBoundingSet=", "StateDirectory=ocap", "CacheDirectory=ocap",
             "RuntimeDirectory=ocap", "ConfigurationDirectory=ocap", "WatchdogSec=60s", "Restart=on-failure",
             "ExecReload=/bin/kill -HUP $MAINPID", "User=ocap"]


def test_unit_carries_every_hardening_directive():
    """Where systemd-analyze cannot run, the sandbox is checked by reading the unit: every directive
    that took the offline exposure score to 1.3 is there (ENVIRONMENT.md §8)."""
    lines = set(UNIT.read_text().splitlines())
    assert [d for d in HARDENING if d not in lines] == []


def test_unit_declares_notify_and_config_exit_code():
    lines = set(UNIT.read_text().splitlines())
    assert {"Type=notify", "RestartPreventExitStatus=78", "PrivateNetwork=yes", "IPAddressDeny=any",
            "RestrictAddressFamilies=AF_UNIX"} <= lines
    assert "PrivateDevices=yes" not in lines        # would hide the Jetson GPU devices


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", str(_unit_with_existing_binary(tmp_path))],
                       capture_output=True, text=True)
    # unknown keys and bad values only warn: any output about the unit is a failure
    problems = [ln for ln in r.stderr.splitlines() if "ocapd.service" in ln]
    assert r.returncode == 0 and not problems, r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_sandbox_exposure_score(tmp_path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                        str(_unit_with_existing_binary(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_the_sandbox_lets_ocapd_write_node_exporters_default_textfile_directory():
    """``[metrics] textfile`` for node_exporter: ProtectSystem=strict makes /var/lib read-only but for the
    paths listed; "-" keeps the unit starting where node_exporter is not installed."""
    assert "ReadWritePaths=-/var/lib/node_exporter/textfile_collector" in UNIT.read_text().splitlines()
