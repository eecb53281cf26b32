"""`ocap bench quality --quick` runs end to end and writes its section and plot."""

import pytest

from tests.helpers import run_cli

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_quick_quality_benchmark_writes_report(tmp_path):
    out = tmp_path / "benchmarks.md"
    r = run_cli("bench", "quality", "--quick", "--out", str(out), "--rows", str(tmp_path / "rows.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "<!-- section:quality-quick -->" in text and "### Targets" in text
    assert "class-aware (ocap) ≥ 2 pp above l1" in text and ("**MET**" in text or "**MISSED**" in text)
    assert (tmp_path / "quality-quick.png").stat().st_size > 1000
    rows = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 4          # two subsets x four methods
