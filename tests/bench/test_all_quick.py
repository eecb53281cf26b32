"""Every benchmark's quick form (what the suite runs; ``ocap bench all --quick`` runs them in turn) writes
its section with its figures. One test per section, so that test workers share them; timings and
targets are not judged here (a busy machine decides those), only that each section runs and says
what it measured. ``bench all`` itself (every section, then the summary) is checked in-process."""

import argparse
import json
import re

import pytest

from tests.helpers import run_cli

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _between(text: str, name: str) -> str:
    return text[text.index(f"<!-- section:{name}-quick -->"):text.index(f"<!-- /section:{name}-quick -->")]


def _quality(text, tmp_path):
    assert "class-aware ≥ 2 pp above l1 at the MACs the search chose" in text
    assert "| fmnist-cnn | 1,8 | ocap |" in text and "| fmnist-cnn | 3,5,9 | l1 |" in text
    assert (tmp_path / "quality-quick.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4                                                       # two subsets x four methods
    for row in rows:                            # a search's row carries its path (or says why it has no candidate)
        assert "error" in row or row["method"] == "l1" or row["search"]["path"], row


def _serving(text, tmp_path):
    assert "| fmnist-cnn | 16 |" in text and "| none mapped | MET |" in text


def _loop(text, tmp_path):
    # one demo (the full run adds the other subsets and one core busy): no request failed, and the row
    # says whether it deployed or why not (whether it did depends on how busy the machine is: a gate's
    # speed-up, a budget; the full run judges that)
    assert re.search(r"\| 0,3,7 \| as is \| \d+ \| \d+ \| 0 \| (yes|no: [^|]+) \|", text), text
    assert "| one core busy |" not in text, text


def _load(text, tmp_path):
    assert "Failed requests: 0 of" in text


def _soak(text, tmp_path):
    assert "| RSS of ocapd (every 5 s) |" in text


def _reliability(text, tmp_path):
    assert "Verdict: MET (8 of 8 passed)" in text


def _security(text, tmp_path):
    assert "| exposure score ≤ 2.0 |" in text


def _stress(text, tmp_path):
    assert "(0 lost) | equal | MET |" in text, text                               # counts = answers
    assert re.search(r"\| failed requests \| 0 of \d+ \| 0 \| MET \|", text), text
    assert re.search(r"\| swaps overlapping client requests \| [1-9]\d* of \d+ swaps \| ≥ 1 \| MET \|", text), text
    assert "MISSED" not in text, text


def _int8(text, tmp_path):
    assert re.search(r"\| fmnist-cnn \| base \| 1\.0× \| 9\d\.\d\d % \| 9\d\.\d\d % \|", text), text   # FP32, INT8
    assert "| fmnist-cnn | pruned | 4.0× |" in text and "on ≥ 2 models |" in text, text


def _budget(text, tmp_path):
    assert re.search(r"\| busy \| \d+ \| \d+ \| [\d.→✗ ]+ \| \d+ \| [\d.]+× \|", text), text


def _formats(text, tmp_path):
    assert re.search(r"\| fmnist-cnn \| base \| [\d.]+M \| 0 \| NHWC \| [\d.]+ \| [\d.]+ \| [\d.]+× \|", text), text
    assert re.search(r"\| fmnist-resnet20 \| 8× \| [\d.]+M \| [1-9]\d* \| NCHW \|", text), text   # the crash's shape


CHECKS = {"quality": _quality, "serving": _serving, "loop": _loop, "load": _load, "soak": _soak,
          "reliability": _reliability, "security": _security, "stress": _stress, "int8": _int8, "budget": _budget,
          "formats": _formats}


@pytest.mark.parametrize("section", list(CHECKS))
def test_the_quick_benchmark_writes_its_figures(tmp_path, section):
    out = tmp_path / "benchmarks.md"
    r = run_cli("bench", section, "--quick", "--out", str(out), "--rows", str(tmp_path / "rows.jsonl"), timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    part = _between(text, section)
    assert "nan" not in part.replace("fashion", "")
    CHECKS[section](part, tmp_path)


def test_bench_all_runs_every_section_then_the_summary_even_past_a_failure(tmp_path, monkeypatch):
    """``run_all``'s order and its summary, with stand-in sections (the real ones run above): a section
    that raises is named and the others still write theirs."""
    from bench import cli

    ran = []

    def section(name):
        def run(args):
            ran.append(name)
            if name == "load":
                raise RuntimeError("broken on purpose")
            return f"## {name}\n\nVerdict: MET\n"
        return run

    monkeypatch.setattr(cli, "SECTIONS", {name: section(name) for name in cli.SECTIONS})
    monkeypatch.setattr(cli, "run_quality", lambda args: ran.append("quality") or 0)
    out = tmp_path / "benchmarks.md"
    args = argparse.Namespace(out=str(out), quick=True)
    assert cli.run_all(args) == 1
    assert ran == ["quality"] + list(cli.SECTIONS)
    text = out.read_text()
    assert "<!-- section:serving-quick -->" in text and "<!-- section:load-quick -->" not in text
    summary = text[text.index("<!-- section:summary-quick -->"):]
    assert "load" in summary and "**missing**" in summary
