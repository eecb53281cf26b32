"""Reliability pass counts (``ocap bench reliability``): the suite in tests/reliability run by pytest in
a subprocess (kill -9 matrix, disk faults, bad models, hostile input, protocol fuzz, no data leaving),
passed / failed per file; the protocol fuzz runs 50,000 cases here (10,000 in CI). Quick mode runs the
files that take seconds."""

import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["tests/reliability/test_bad_models.py", "tests/reliability/test_hostile_input.py"]
FUZZ_EXAMPLES = 50_000


def run(quick: bool = False) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        env = dict(os.environ, OCAP_FUZZ_EXAMPLES=str(FUZZ_EXAMPLES))       # the long fuzz run
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        *(QUICK if quick else ["tests/reliability"])], cwd=str(ROOT), capture_output=True, text=True,
                       env=env)
        seconds = time.perf_counter() - t0
        files: Dict[str, Dict[str, int]] = {}
        for case in ET.parse(str(xml)).getroot().iter("testcase"):
            name = re.sub(r"^tests\.reliability\.", "", case.get("classname", "?"))
            row = files.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0})
            kind = "failed" if case.find("failure") is not None or case.find("error") is not None else \
                "skipped" if case.find("skipped") is not None else "passed"
            row[kind] += 1
    return {"files": files, "seconds": seconds, "quick": quick}


def markdown(res: Dict[str, Any], machine: str) -> str:
    lines = ["## Reliability suite (`ocap bench reliability`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}"
             + (" (quick mode: the files that take seconds)" if res["quick"] else "")
             + f", {res['seconds'] / 60:.1f} min. Target: every case passes.", "",
             "| file | passed | failed | skipped |", "|---|---|---|---|"]
    total = {"passed": 0, "failed": 0, "skipped": 0}
    for name, row in sorted(res["files"].items()):
        lines.append(f"| {name} | {row['passed']} | {row['failed']} | {row['skipped']} |")
        for k in total:
            total[k] += row[k]
    verdict = "MET" if total["failed"] == 0 and total["passed"] > 0 else "MISSED"
    lines += [f"| **all** | {total['passed']} | {total['failed']} | {total['skipped']} |", "",
              f"Verdict: {verdict} ({total['passed']} of {total['passed'] + total['failed']} passed)."]
    return "\n".join(lines)
