"""``ocap bench all --quick`` (what CI runs): every benchmark in its quick form writes its section with
its figures, and the summary names no section as missing. Timings are not judged here."""

import json
import re

import pytest

from tests.helpers import run_cli

pytestmark = [pytest.mark.torch, pytest.mark.slow]
SECTIONS = ["quality", "serving", "loop", "load", "soak", "reliability", "security", "stress", "int8", "budget"]


def test_every_benchmark_writes_its_figures(tmp_path):
    out = tmp_path / "benchmarks.md"
    r = run_cli("bench", "all", "--quick", "--out", str(out), "--rows", str(tmp_path / "rows.jsonl"), timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for name in SECTIONS:
        assert f"<!-- section:{name}-quick -->" in text, name
    summary = text[text.index("<!-- section:summary-quick -->"):]
    assert "**missing**" not in summary and summary.count("| ") >= len(SECTIONS)
    assert "nan" not in text.replace("fashion", "")
    # a few figures each section must carry
    quality = text[text.index("<!-- section:quality-quick -->"):text.index("<!-- /section:quality-quick -->")]
    assert "class-aware ≥ 2 pp above l1 at the MACs the search chose" in quality
    assert "| fmnist-cnn | 1,8 | ocap |" in quality and "| fmnist-cnn | 3,5,9 | l1 |" in quality
    assert (tmp_path / "quality-quick.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4                                                       # two subsets x four methods
    for row in rows:                            # a search's row carries its path (or says why it has no candidate)
        assert "error" in row or row["method"] == "l1" or row["search"]["path"], row
    assert "| fmnist-cnn | 16 |" in text and "| none mapped | MET |" in text        # serving
    assert re.search(r"\| 0,3,7 \| as is \| \d+ \| \d+ \| 0 \| yes \|", text)        # loop: 0 failed, deployed
    assert re.search(r"\| 0,3,7 \| one core busy \| \d+ \| \d+ \| \d+ \|", text)      # ... and with a core busy
    assert "Failed requests: 0 of" in text                                          # load
    assert "| RSS of ocapd (every 5 s) |" in text                                   # soak
    assert "Verdict: MET (8 of 8 passed)" in text                                   # reliability quick
    assert "| exposure score ≤ 2.0 |" in text                                       # security
    assert re.search(r"\| busy \| \d+ \| \d+ \| [\d.→✗ ]+ \| \d+ \| [\d.]+× \|", text)     # budget
    stress = text[text.index("<!-- section:stress-quick -->"):text.index("<!-- /section:stress-quick -->")]
    assert "(0 lost) | equal | MET |" in stress, stress                             # stress: counts = answers
    assert re.search(r"\| failed requests \| 0 of \d+ \| 0 \| MET \|", stress), stress
    assert re.search(r"\| swaps overlapping client requests \| [1-9]\d* of \d+ swaps \| ≥ 1 \| MET \|", stress), stress
    assert "MISSED" not in stress, stress
    int8 = text[text.index("<!-- section:int8-quick -->"):text.index("<!-- /section:int8-quick -->")]
    assert re.search(r"\| fmnist-cnn \| base \| 1\.0× \| 9\d\.\d\d % \| 9\d\.\d\d % \|", int8), int8   # FP32 and INT8 rows
    assert "| fmnist-cnn | pruned | 4.0× |" in int8 and "on ≥ 2 models |" in int8, int8
