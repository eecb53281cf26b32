"""The benchmark report: section replacement, the quality section's target verdicts and its resumable
rows file (tiny rows written here; no torch)."""

import json
from dataclasses import replace

import pytest

from bench.quality import (
    PRUNE_CLI,
    RowSink,
    class_subsets,
    current,
    methods_for,
    pending,
    plan,
    read_rows,
    row_key,
)
from bench.report import judge, quality_markdown, replace_section, summary_markdown

SETTINGS = {"time_budget": 150.0, "levels": [1.5, 2.0], "max_loss": 1.0, "per_class": 256, "epochs": 30, "seed": 0,
            "threads": 1, "latency_runs": 200}


def test_replace_section_is_idempotent_and_keeps_other_sections(tmp_path):
    md = tmp_path / "b.md"
    replace_section(md, "a", "first A")
    replace_section(md, "b", "only B")
    replace_section(md, "a", "second A")
    text = md.read_text()
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.count("<!-- section:a -->") == 1 and text.startswith("# Benchmarks")


def _row(method, delta, macs, acc=0.9, k=2, classes=(0, 1), speed=None, model="m"):
    path = [{"level": 1.5, "macs": 10, "mac_reduction": 1.5, "agreement": 0.998, "hard_agreement": 1.0,
             "loss_pp": 0.2, "accepted": True, "epochs": 3, "stopped": "patience", "seconds": 4.0},
            {"level": 2.0, "macs": 8, "mac_reduction": 2.1, "agreement": 0.98, "hard_agreement": 0.98,
             "loss_pp": 2.0, "accepted": False, "epochs": 3, "stopped": "patience", "seconds": 4.0}]
    return {"model": model, "k": k, "classes": list(classes), "method": method, "settings": SETTINGS, "seed": 0,
            "delta_pp": delta, "mac_reduction": macs, "accuracy": acc, "restricted_accuracy": acc - delta / 100,
            "base_accuracy": 0.9, "worst_class": acc - 0.05, "param_reduction": macs, "latency_ms": 0.1,
            "base_latency_ms": 0.1 * (speed if speed is not None else macs * 0.6),
            "latency_speedup": speed if speed is not None else macs * 0.6, "onnx_size_ratio": macs,
            "val_agreement": 0.99, "path_len": 2, "seconds": 30.0, "loadavg": 0.5, "peak_rss_mb": 700.0,
            "timings": {"sample_selection": 2.0, "load": 0.1, "teacher": 0.3, "score": 1.0, "select": 0.5,
                        "search": 20.0, "export": 1.0},
            "search": {"path": path, "stopped": "over_budget", "level": 1.5, "polish": {}}}


def _verdicts(rows, prune=None):
    return {t: (m, s) for t, m, s in judge(rows, prune)}


def test_targets_are_judged_from_the_rows():
    rows = [_row("ocap", -0.5, 9.0, 0.95, model="fmnist-resnet20"), _row("l1", -5, 9.0, 0.90, model="fmnist-resnet20"),
            _row("ocap", -0.2, 4.0, 0.97, k=5, classes=(0, 1, 2, 3, 4))]
    prune = {"model": "fmnist-resnet20", "classes": [0, 2, 9], "method": PRUNE_CLI, "seconds": 150.0,
             "peak_rss_mb": 900.0, "loadavg": 0.1}
    assert {s for _, s in _verdicts(rows, prune).values()} == {"MET"}
    rows[0]["delta_pp"] = -1.5
    acc = [v for t, v in _verdicts(rows, prune).items() if t.startswith("test accuracy")][0]
    assert acc == ("1/2 subsets (50 %); 1 misses, listed below", "MISSED")
    rows = [_row("ocap", -0.5, 6.0, speed=1.0)]
    assert [s for t, (_, s) in _verdicts(rows).items() if t.startswith("ONNX")] == ["MISSED"]


def test_missing_data_says_so_and_never_prints_nan():
    verdicts = _verdicts([_row("ocap", -0.5, 6.0)])          # no ResNet-20, no K = 5, no l1, no prune timing
    missing = {t for t, (m, s) in verdicts.items() if s == "no data"}
    assert any("fmnist-resnet20" in t for t in missing) and any(t.startswith("K = 5") for t in missing)
    assert any("above l1" in t for t in missing) and any("ocap prune" in t for t in missing)
    assert all(m == "no data" for t, (m, s) in verdicts.items() if t in missing)
    for rows in ([], [_row("ocap", -0.5, 6.0)], [dict(_row("ocap", 0, 1)), {"model": "m", "k": 2, "classes": [0, 1],
                                                                              "method": "l1", "error": "x"}]):
        md = quality_markdown(rows, {"mode": "test"}, "test machine", {}, None, "q.png")
        assert "nan" not in md.lower() and "| **no data** |" in md
    assert "no data: no run produced a candidate" in quality_markdown([], {}, "m", {}, None, None)


def test_no_data_counts_as_not_met_in_the_summary(tmp_path):
    out = tmp_path / "b.md"
    replace_section(out, "quality", quality_markdown([_row("ocap", -0.5, 6.0)], {}, "m", {}, None, None))
    summary = summary_markdown(out, ["quality"], "m", {}, 1.0)
    met, missed = summary.splitlines()[-1].strip("|").split("|")[-2:]
    verdicts = judge([_row("ocap", -0.5, 6.0)], None)
    assert int(met) == sum(s == "MET" for _, _, s in verdicts)
    assert int(missed) == sum(s != "MET" for _, _, s in verdicts)


def test_every_miss_and_every_failed_search_is_listed_with_a_failed_search_counted_as_1x():
    rows = [_row("ocap", -2.5, 9.0, classes=(0, 6)), _row("ocap", -0.1, 9.0, classes=(1, 8)),
            {"model": "m", "k": 2, "classes": [3, 5], "method": "ocap", "settings": SETTINGS,
             "error": "no operating point keeps held-back agreement"}]
    md = quality_markdown(rows, {}, "test machine", {}, None, None)
    assert "- m {0,6}: -2.50 pp at 9.00× fewer MACs" in md
    assert "- m {3,5}: no candidate (no operating point keeps held-back agreement)" in md
    macs = [m for t, (m, s) in _verdicts(rows).items() if t.startswith("K ≤ 3: median MAC reduction, all")][0]
    assert macs == "median 9.00× over 3 subsets (1 without a candidate counted as 1×)"
    assert "| m | 0,6 | ocap | " in md and "1.5 → 2.1✗ (2 levels, over_budget)" in md


def test_the_rows_file_resumes_skipping_rows_present_and_tables_use_every_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    jobs = plan(["fmnist-cnn", "fmnist-vgg"], [2], 2, ["ocap", "l1", "random"], SETTINGS)
    assert [j["methods"] for j in jobs] == [["ocap", "l1", "random"]] * 2 + [["ocap"]] * 2
    first = jobs[0]
    sink = RowSink(path)
    done = [dict(_row("ocap", -0.4, 7.5, 0.95, model="fmnist-cnn", classes=first["classes"])),
            dict(_row("ocap", -0.3, 5.0, model="fmnist-vgg", classes=jobs[2]["classes"]))]
    for r in done:
        sink(r)
    sink(dict(_row("l1", -1.0, 7.5, model="fmnist-cnn", classes=first["classes"]), settings=dict(SETTINGS, seed=1)))
    with open(path, "a") as f:                    # a run killed while writing its last line
        f.write('{"model": "fmnist-cnn", "classes": [0')
    sink2 = RowSink(path)                          # the next run starts: the cut line is closed, then skipped
    rows = read_rows(path)
    assert len(rows) == 3 and {row_key(r) for r in current(rows, SETTINGS)} == {row_key(r) for r in done}

    left = pending(jobs, current(rows, SETTINGS))
    assert [(j["model"], j["methods"]) for j in left] == [("fmnist-cnn", ["l1", "random"]),
                                                          ("fmnist-cnn", ["ocap", "l1", "random"]),
                                                          ("fmnist-vgg", ["ocap"])]
    assert left[0]["ocap_macs"] == 7.5 and "ocap_macs" not in left[1]

    sink2(dict(_row("l1", -3.0, 7.5, 0.924, model="fmnist-cnn", classes=first["classes"])))
    rows = current(read_rows(path), SETTINGS)
    assert len(rows) == 3 and json.loads(path.read_text().splitlines()[-1])["method"] == "l1"
    md = quality_markdown(rows, {}, "test machine", {}, None, None)
    for r in rows:                                 # every row of the file is in the tables
        assert f"| {r['model']} | {','.join(map(str, r['classes']))} | {r['method']} |" in md
    assert "class-aware − l1: mean +2.60 pp over 1 subsets" in md and "of the rows: unknown (3)." in md


def test_comparisons_run_on_resnet20_and_the_cnn_only():
    assert methods_for("fmnist-vgg", ["l1", "ocap", "random"]) == ["ocap"]
    assert methods_for("fmnist-vgg", ["ocap-first", "l1", "ocap"]) == ["ocap", "ocap-first"]     # searches everywhere
    assert methods_for("fmnist-resnet20", ["ocap+truth", "l1", "ocap"]) == ["ocap", "l1", "ocap+truth"]


def test_class_subsets_are_distinct_sorted_and_start_with_the_hard_one():
    subsets = class_subsets(3, 4, seed=0)
    assert subsets[0] == [0, 2, 6] and len({tuple(s) for s in subsets}) == 4
    assert all(s == sorted(s) and len(s) == 3 for s in subsets)
    assert class_subsets(3, 4, seed=0) == subsets
    assert class_subsets(5, 4, seed=0)[0] == [0, 2, 3, 4, 6]


def test_ocap_first_is_the_search_with_the_first_conv_prunable_down_to_8_channels():
    from bench.quality import method_spec
    from ocap_core.prune_spec import PruneSpec

    base = PruneSpec()
    s = method_spec("ocap-first", base, None)
    assert (s.rule, s.scorer, s.keep_first, s.min_width) == (base.rule, base.scorer, 0, 8)
    assert method_spec("ocap", base, None) == replace(base, search=replace(base.search, cascade=False))
    assert method_spec("cascade", base, None) == replace(base, search=replace(base.search, cascade=True))


def test_report_only_rebuilds_the_section_from_the_rows_and_runs_nothing(tmp_path, capsys):
    """The real rows of the full run (docs/quality-rows.jsonl) rebuilt into a fresh file: no job starts
    (a job would take minutes and print its progress), every row of those settings is in the tables."""
    import argparse
    from pathlib import Path

    from bench.cli import add_arguments, run_bench

    rows = Path(__file__).resolve().parents[2] / "docs" / "quality-rows.jsonl"
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "b.md"
    args = p.parse_args(["quality", "--report-only", "--rows", str(rows), "--out", str(out)])
    assert run_bench(args) == 0
    text = out.read_text()
    err = capsys.readouterr().err
    assert "0 to run in 0 jobs" in err and "[1/" not in err
    assert "rebuilt from the rows file, nothing run" in text and "### Targets" in text
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_loop_table_says_why_nothing_was_deployed(tmp_path):
    from bench.loop import markdown, save_rows

    models = [{"accuracy": 0.9, "macs": 300, "latency_ms": 0.3}, {"accuracy": 0.95, "macs": 300, "latency_ms": 0.3}]
    ran = {"requests": 10, "failed": 0, "probation": None, "drift_reverted": False, "wall_s": 200.0}
    rows = [dict(ran, subset="2,4,6", deployed=False, models=models,
                 gave_up="personalization failed: NoOperatingPoint: no operating point | tried 1.53x: -2.07 pp"),
            dict(ran, subset="0,3,7", load="one core busy", deployed=False, models=models, gave_up=None)]
    text = markdown(rows, "test machine", quick=False)
    assert "| no: personalization failed: NoOperatingPoint: no operating point / tried 1.53x: -2.07 pp |" in text
    assert "| 0,3,7 | one core busy | 200 | 10 | 0 | no |" in text
    save_rows(rows, tmp_path / "loop-rows.json")
    assert json.loads((tmp_path / "loop-rows.json").read_text())[0]["gave_up"].endswith("-2.07 pp")
    # 2,4,6 declined (no operating point: keeping the base is right); 0,3,7 deployed nothing: a miss
    assert "Verdict: MISSED" in text and "1 of 2 declined" in text
    assert "Verdict: MET" in markdown(rows[:1], "test machine", quick=False)


@pytest.mark.parametrize("change,met", [({}, True), ({"wall_s": 301.0}, False), ({"failed": 1}, False),
                                        ({"drift_reverted": False}, False), ({"deployed": False}, False),
                                        ({"deployed": False, "gave_up": "worker killed: over its time budget"}, False),
                                        ({"deployed": False, "drift_reverted": False,
                                          "gave_up": "personalization failed: NoOperatingPoint: none"}, True)])
def test_a_loop_run_passes_deployed_and_reverted_or_declined_for_want_of_an_operating_point(change, met):
    from bench.loop import loop_ok

    models = [{"accuracy": 0.9, "macs": 300, "latency_ms": 0.3}] * 3
    r = dict({"subset": "0,3,7", "models": models, "requests": 10, "failed": 0, "deployed": True,
              "probation": "probation_passed", "drift_reverted": True, "wall_s": 200.0}, **change)
    assert loop_ok(r) is met


def test_loop_pays_is_judged_on_the_readme_demo_as_is_and_busy():
    from bench.loop import markdown

    def run(subset, load, macs_div):
        models = [{"accuracy": 0.9, "macs": 300, "latency_ms": 0.3}, {"accuracy": 0.95, "macs": 300, "latency_ms": 0.3},
                  {"accuracy": 0.945, "macs": 300 / macs_div, "latency_ms": 0.1}]
        return {"subset": subset, "load": load, "models": models, "requests": 10, "failed": 0, "deployed": True,
                "probation": "probation_passed", "drift_reverted": True, "wall_s": 200.0}

    rows = [run("0,3,7", "as is", 3.1), run("2,4,6", "as is", 1.0), run("0,3,7", "one core busy", 3.2)]
    assert "Personalization pays: MET" in markdown(rows, "m", quick=False)
    assert "2,4,6 as is: no" in markdown(rows, "m", quick=False)
    rows[2] = run("0,3,7", "one core busy", 2.5)
    assert "Personalization pays: MISSED" in markdown(rows, "m", quick=False)


def test_the_readme_demo_is_judged_on_deploying_one_ladder_step_run_after_run():
    from bench.loop import ladder_step, markdown, point, same_point

    def run(reduction, level, cascade=False):
        pers = {"accuracy": 0.97, "macs": 300 / reduction, "latency_ms": 0.1}
        if cascade:
            pers.update(specialist_macs=pers["macs"], macs=pers["macs"] * 1.2, fallback_share=0.04)
        path = [{"level": 1.5, "mac_reduction": 1.54, "accepted": True},
                {"level": level, "mac_reduction": reduction, "accepted": True},
                {"level": 16.0, "mac_reduction": 17.0, "accepted": False}]
        return {"subset": "0,3,7", "load": "as is", "requests": 10, "failed": 0, "deployed": True,
                "probation": "probation_passed", "drift_reverted": True, "wall_s": 200.0, "search": {"path": path},
                "models": [{"accuracy": 0.93, "macs": 300, "latency_ms": 0.3},
                           {"accuracy": 0.978, "macs": 300, "latency_ms": 0.3}, pers]}

    runs = [run(3.03, 3.0), run(3.03, 3.0), run(4.31, 4.0, cascade=True), run(3.6, 3.61)]
    assert [ladder_step(r) for r in runs] == [2, 2, 3, 2]          # 1.5, 2, 3, 4...: a midpoint counts below
    assert same_point(runs) and point(runs[2]) == "4.31× + 4.0% to the base" and point(runs[0]) == "3.03× alone"
    assert "Same operating point: MET" in markdown(runs, "m", quick=False)
    runs.append(run(6.8, 6.0))
    assert not same_point(runs) and "Same operating point: MISSED" in markdown(runs, "m", quick=False)
    assert ladder_step(dict(runs[0], models=runs[0]["models"][:2])) is None


def test_the_cascade_targets_read_per_frame_figures_and_count_a_missing_candidate_as_a_miss():
    from bench.report import cascade_rows, cascade_targets

    def row(model, classes, method, delta, per_frame, speed, error=False):
        if error:
            return {"model": model, "k": len(classes), "classes": classes, "method": method, "error": "none"}
        return {"model": model, "k": len(classes), "classes": classes, "method": method, "delta_pp": delta,
                "mac_reduction": per_frame * 1.3, "mac_reduction_per_frame": per_frame, "served_speedup": speed,
                "fallback_share": 0.1}

    rows = [row("m", [0, 2, 6], "cascade", -0.4, 2.6, 1.5), row("m", [0, 2, 6], "ocap", -1.2, 2.46, 1.5),
            row("m", [1, 8], "cascade", -0.2, 9.0, 3.0), row("m", [0, 2, 3, 4, 6], "cascade", 0.0, 1.5, 1.1, error=True)]
    got = {t.split(":")[0]: (m, s) for t, m, s in cascade_targets(rows)}
    assert got["K ≤ 3, all models"] == ("2/2 subsets", "MET")
    assert got["K ≤ 3"][0].startswith("median") and any(s == "MET" for m, s in got.values())
    confusable = [v for k, v in got.items() if k.startswith("confusable")][0]
    assert confusable == ("1/2 (model, set) pairs", "MISSED")          # {0,2,3,4,6} found nothing
    table = "\n".join(cascade_rows(rows))
    assert "| m | 0,2,6 | -1.20 | 2.46 | -0.40 | 3.38 | 10.0 % | 2.60 | 1.50 | 1.50 |" in table
    assert "| m | 0,2,3,4,6 | – | – | no candidate |" in table


def test_named_subsets_are_grouped_by_size_and_bad_ones_are_refused():
    from bench.cli import named_subsets
    from ocap_core.errors import OcapError

    assert named_subsets("0,2,6; 6,4,2 ;0,2,3,4,6;") == {3: [[0, 2, 6], [2, 4, 6]], 5: [[0, 2, 3, 4, 6]]}
    for bad, why in (("0,x", "not comma-separated"), ("3", "two or more"), (";", "no class subset")):
        with pytest.raises(OcapError, match=why):
            named_subsets(bad)
