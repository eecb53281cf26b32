"""The shipped unit files pass systemd's own offline checks where systemd-analyze exists: ocapd.service,
and ocapd-jetpack4.service for systemd 237 (JetPack 4.6), which uses nothing newer."""

import shutil

import pytest

from tests.helpers import ROOT, captured

UNIT = ROOT / "systemd" / "ocapd.service"
JETPACK4 = ROOT / "systemd" / "ocapd-jetpack4.service"
UNITS = pytest.mark.parametrize("unit", [UNIT, JETPACK4], ids=["ocapd", "ocapd-jetpack4"])


def _unit_with_existing_binary(tmp_path, unit=UNIT):
    text = unit.read_text().replace("ExecStart=/usr/local/bin/ocapd", "ExecStart=/bin/true")
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


@UNITS
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(tmp_path, unit):
    r = captured(["systemd-analyze", "verify", str(_unit_with_existing_binary(tmp_path, unit))])
    # unknown keys and bad values only warn: any output about the unit is a failure
    problems = [ln for ln in r.stderr.splitlines() if "ocapd.service" in ln]
    assert r.returncode == 0 and not problems, r.stderr


@UNITS
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_sandbox_exposure_score(tmp_path, unit):
    r = captured(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                  str(_unit_with_existing_binary(tmp_path, unit))])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def test_the_sandbox_lets_ocapd_write_node_exporters_default_textfile_directory():
    """``[metrics] textfile`` for node_exporter: ProtectSystem=strict makes /var/lib read-only but for the
    paths listed; "-" keeps the unit starting where node_exporter is not installed."""
    assert "ReadWritePaths=-/var/lib/node_exporter/textfile_collector" in UNIT.read_text().splitlines()


# what systemd 237 lacks (systemd's NEWS: the version each came in), and the system-call groups it has
NEWER_THAN_237 = {"ProtectHostname=": 242, "RestrictSUIDSGID=": 242, "ProtectKernelLogs=": 244, "ProtectClock=": 245,
                  "@system-service": 239, "ProtectProc=": 247, "ProcSubset=": 247, "RestrictFileSystems=": 250}
GROUPS_IN_237 = {"@clock", "@cpu-emulation", "@debug", "@io-event", "@ipc", "@keyring", "@module", "@mount",
                 "@network-io", "@obsolete", "@privileged", "@process", "@raw-io", "@resources",   # 231
                 "@basic-io", "@filesystem", "@reboot", "@swap"}                                    # 233


def test_the_jetpack4_unit_uses_nothing_systemd_237_lacks():
    """On systemd 237 an unknown directive is ignored with a warning, and an unknown system-call group
    beside SystemCallErrorNumber= has had a service killed with SIGSYS; what the unit gives up is
    replaced (an empty capability bounding set, a deny list of groups, /dev/kmsg inaccessible)."""
    text = JETPACK4.read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert [d for d in NEWER_THAN_237 if any(d in ln for ln in lines)] == []
    (filt,) = [ln for ln in lines if ln.startswith("SystemCallFilter=")]
    groups = filt.split("=", 1)[1].lstrip("~").split()
    assert groups and set(groups) <= GROUPS_IN_237 and filt.startswith("SystemCallFilter=~")
    assert {"CapabilityBoundingSet=", "NoNewPrivileges=yes", "InaccessiblePaths=-/dev/kmsg",
            "SystemCallErrorNumber=EPERM"} <= set(lines)
    # the rest of the sandbox is ocapd.service's
    same = [d for d in HARDENING if not any(d.startswith(n.rstrip("=")) for n in NEWER_THAN_237)
            and not d.startswith("SystemCallFilter=")]
    assert [d for d in same if d not in lines] == []
