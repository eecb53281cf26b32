"""The benchmark report: section replacement and target verdicts (no torch)."""

from bench.quality import class_subsets
from bench.report import judge, quality_markdown, replace_section


def test_replace_section_is_idempotent_and_keeps_other_sections(tmp_path):
    md = tmp_path / "b.md"
    replace_section(md, "a", "first A")
    replace_section(md, "b", "only B")
    replace_section(md, "a", "second A")
    text = md.read_text()
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.count("<!-- section:a -->") == 1 and text.startswith("# Benchmarks")


def _row(method, delta, macs, acc=0.9, k=2, classes=(0, 1), speed=None):
    return {"model": "m", "k": k, "classes": list(classes), "method": method, "delta_pp": delta,
            "mac_reduction": macs, "accuracy": acc, "latency_speedup": speed if speed is not None else macs * 0.6}


def test_targets_are_judged_from_the_rows():
    rows = [_row("ocap", -0.5, 6.0, 0.95), _row("l1", -5, 6.0, 0.90), _row("ocap+truth", 0, 6.0, 0.955),
            _row("ocap+random-select", -1, 6.0, 0.94)]
    verdicts = {t.split(":")[0]: s for t, _, s in judge(rows, prune_seconds=100)}
    assert set(verdicts.values()) == {"MET"}
    rows[0]["delta_pp"] = -1.5
    assert judge(rows, None)[0][2] == "MISSED"
    rows = [_row("ocap", -0.5, 6.0, speed=1.0)]
    assert [s for t, _, s in judge(rows, None) if t.startswith("latency")] == ["MISSED"]


def test_class_subsets_are_distinct_sorted_and_start_with_the_hard_one():
    subsets = class_subsets(3, 4, seed=0)
    assert subsets[0] == [0, 2, 6] and len({tuple(s) for s in subsets}) == 4
    assert all(s == sorted(s) and len(s) == 3 for s in subsets)
    assert class_subsets(3, 4, seed=0) == subsets


def test_runs_without_a_candidate_are_listed_not_averaged():
    row = dict(_row("ocap", -0.5, 6.0), base_accuracy=0.9, restricted_accuracy=0.95, worst_class=0.9,
               param_reduction=5.0, latency_ms=0.1, base_latency_ms=0.2, onnx_size_ratio=5.0,
               timings=dict.fromkeys(["sample_selection", "score", "prune", "finetune", "export"], 1.0),
               peak_rss_mb=100.0)
    failed = [{"model": "m", "k": 2, "classes": [0, 1], "method": "random", "error": "ONNX export disagrees"}]
    md = quality_markdown([row], {}, "test machine", {}, None, None, failed=failed)
    assert "1 run(s) produced no candidate" in md and "m 0,1 random: ONNX export disagrees" in md
    assert "| m | 2 | random |" not in md
