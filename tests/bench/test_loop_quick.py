"""``ocap bench loop --quick``: one ``ocap demo`` run end to end, its row and verdict in the section."""

import pytest

from tests.helpers import run_cli


@pytest.mark.torch
@pytest.mark.slow
def test_loop_benchmark_quick(tmp_path):
    out = tmp_path / "b.md"
    r = run_cli("bench", "loop", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "<!-- section:loop-quick -->" in text and "| 0,3,7 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| 0,3,7 |")).split("|")
    assert row[4].strip() == "0" and row[5].strip() == "yes" and row[7].strip() == "yes"   # failed, deployed, revert
