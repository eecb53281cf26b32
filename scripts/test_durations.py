"""Write tests/durations.json from a JUnit XML file of a whole test run (``pytest --junitxml=FILE``):
each test of 2 s or more and its seconds. tests/conftest.py runs the longest first, so that pytest-xdist's
workers are not left waiting on one long test at the end; a test missing from the file runs after
them in the order collected. Regenerate it when the slow tests change:

    bash scripts/test.sh --junitxml=/tmp/run.xml && python3 scripts/test_durations.py /tmp/run.xml
"""

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "durations.json"
MIN_SECONDS = 2.0


def node_id(case: ET.Element) -> str:
    module = case.get("classname", "")
    return module.replace(".", "/") + ".py::" + case.get("name", "")


def main(paths) -> int:
    seconds = {}
    for path in paths:
        for case in ET.parse(path).iter("testcase"):
            t = float(case.get("time", 0))
            nid = node_id(case)
            seconds[nid] = max(seconds.get(nid, 0.0), t)
    kept = {k: round(v, 1) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1]) if v >= MIN_SECONDS}
    OUT.write_text(json.dumps(kept, indent=0, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(kept)} tests of {MIN_SECONDS:g} s or more, {sum(kept.values()) / 60:.1f} min in all")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
