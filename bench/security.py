"""The unit file's sandbox (``ocap bench security``): systemd's own offline exposure score where
``systemd-analyze`` exists (target ≤ 2.0), else the hardening directives read from the unit."""

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "ocapd.service"


def run() -> Dict[str, Any]:
    text = UNIT.read_text(encoding="utf-8")
    directives = [ln for ln in text.splitlines() if "=" in ln and not ln.startswith("#")]
    if shutil.which("systemd-analyze") is None:
        return {"score": None, "directives": len(directives), "how": "systemd-analyze is not installed here"}
    with tempfile.TemporaryDirectory() as tmp:
        unit = Path(tmp) / "ocapd.service"
        unit.write_text(text.replace("ExecStart=/usr/local/bin/ocapd", "ExecStart=/bin/true"), encoding="utf-8")
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
        version = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    m = re.search(r"Overall exposure level for ocapd.service: ([0-9.]+)", r.stdout)
    return {"score": float(m.group(1)) if m else None, "directives": len(directives),
            "how": f"systemd-analyze security --offline=true ({version.strip()})"}


def markdown(res: Dict[str, Any], machine: str) -> str:
    score = res["score"]
    verdict = "n/a" if score is None else ("MET" if score <= 2.0 else "MISSED")
    shown = "not measured" if score is None else f"{score:.1f}"
    return "\n".join(["## Sandbox (`ocap bench security`)", "",
                      f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine} with {res['how']}; "
                      f"`systemd/ocapd.service` sets {res['directives']} directives.", "",
                      "| target | measured | verdict |", "|---|---|---|",
                      f"| exposure score ≤ 2.0 | {shown} | {verdict} |"])
