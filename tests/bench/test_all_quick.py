"""``ocap bench all --quick`` (what CI runs): every benchmark in its quick form writes its section with
its figures, and the summary names no section as missing. Timings are not judged here."""

import re

import pytest

from tests.helpers import run_cli

pytestmark = [pytest.mark.torch, pytest.mark.slow]
SECTIONS = ["quality", "serving", "loop", "load", "soak", "reliability", "security"]


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
    assert "class-aware (ocap) ≥ 2 pp above l1" in text and (tmp_path / "quality-quick.png").stat().st_size > 1000
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2 * 4          # two subsets x four methods
    assert "| fmnist-cnn | 16 |" in text and "| none mapped | MET |" in text        # serving
    assert re.search(r"\| 0,3,7 \| \d+ \| \d+ \| 0 \| yes \|", text)                # loop: 0 failed, deployed
    assert "Failed requests: 0 of" in text                                          # load
    assert "| RSS of ocapd |" in text                                               # soak
    assert "Verdict: MET (8 of 8 passed)" in text                                   # reliability quick
    assert "| exposure score ≤ 2.0 |" in text                                       # security
