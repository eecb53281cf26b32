"""``ocap prune`` -> ``ocap eval`` round trip on a shipped model (the operating-point search, the default),
a reference rule, the fixed-budget mode, and every bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from ocap_core.build import load_model
from ocap_core.data import load_dataset
from ocap_core.package import open_package
from tests.helpers import built_once, cli, run_cli

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, small_data):
    def build(d):
        # 3 points: about 120 judged images judge no less (``judged_images_needed``), and this is about
        # what the CLI writes, not the search's quality (docs/benchmarks.md). A time
        # budget that never binds: with 40 s, a loaded 2-core machine trained each level one epoch and
        # found no level (the steps, up to 12 epochs each, and 10 polishing epochs bound the run instead)
        r = run_cli("prune", "--model", "fmnist-cnn", "--data", small_data, "--classes", "9,7",
                    "--levels", "2,4,8", "--time-budget", "900", "--epochs", "10", "--max-loss", "3",
                    "--samples-per-class", "128", "--out", str(d / "cnn-79"), "--json")
        assert r.returncode == 0, r.stderr
        (d / "summary.json").write_text(r.stdout)

    d = built_once(tmp_path_factory, "prune-cnn-79", build)
    return d / "cnn-79", json.loads((d / "summary.json").read_text())


@pytest.mark.slow
def test_prune_then_eval_is_close_to_the_restricted_base(pruned):
    out, summary = pruned
    assert summary["class_ids"] == [7, 9] and summary["mac_reduction"] >= 2
    r = run_cli("eval", "--model", str(out), "--json", "--latency-runs", "20")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["classes"] == [7, 9] and res["images"] == 2000
    assert res["accuracy"] >= res["base"]["restricted_accuracy"] - 0.03, res


@pytest.mark.slow
def test_candidate_card_records_how_it_was_made(pruned):
    card = open_package(str(pruned[0])).card
    assert card.class_ids == [7, 9] and card.parent == open_package("fmnist-cnn").card.version
    prov = card.provenance
    assert prov["scorer"] == "ocap" and prov["rule"] == "search" and prov["spec"]["keep_first"] == 1
    assert prov["base_sha256"] == open_package("fmnist-cnn").card.files["model.onnx"]
    assert set(prov["timings"]) == {"load", "teacher", "score", "select", "search", "export"}
    # the search path: every level tried, the chosen one accepted and the one the card describes
    path = prov["search"]["path"]
    assert path[0]["level"] == 2 and all(p["level"] in (2, 4, 8) or not p["accepted"] or p is path[-1] for p in path)
    assert all(a["macs"] > b["macs"] for a, b in zip(path, path[1:]) if a["accepted"])
    chosen = [p for p in path if p["accepted"] and p.get("cheaper", True)][-1]      # the cheapest: the last found
    judged = chosen["cascade"] if chosen.get("accepted_as") == "cascade" else chosen     # alone, or with fallback
    assert chosen["level"] == prov["search"]["level"] and judged["loss_pp"] + judged["loss_se_pp"] <= 3.0  # --max-loss
    assert card.metrics["mac_reduction"] >= chosen["level"] and 0.9 <= card.metrics["val_agreement"] <= 1
    assert card.metrics["onnx_parity_max_abs_diff"] <= 1e-4
    assert card.metrics["macs"] * card.metrics["mac_reduction"] == pytest.approx(card.metrics["base_macs"])
    # samples came from the training split, with some held back for validation
    assert prov["samples"]["train"] > 0 and prov["samples"]["val"] > 0


def _rebuilds_in_torch(path) -> None:
    """The saved history replays on a fresh base and the weights reproduce the ONNX logits."""
    import torch

    from ocap_core.preprocess import preprocess
    from ocap_core.runtime import open_session

    pkg = open_package(str(path))
    model = load_model(pkg)
    x = preprocess(load_dataset("fashion-mnist", "test").x[:32], pkg.card.input)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(open_session(pkg.onnx_path).run(["logits"], {"input": x})[0] - ref).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.jetpack4
def test_pruned_package_rebuilds_in_torch(pruned):
    _rebuilds_in_torch(pruned[0])


@pytest.mark.slow
def test_iterative_cap_rounds_shrink_and_replay(tmp_path, small_data):
    out = tmp_path / "cap"
    r = run_cli("prune", "--model", "fmnist-cnn", "--data", small_data, "--classes", "1,8", "--scorer", "cap", "--rule", "cap", "--tau", "0.9",
                "--keep-first", "1", "--cap-rounds", "3", "--cap-tolerance", "1", "--epochs", "3",
                "--samples-per-class", "32", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    card = open_package(str(out)).card
    rounds = card.provenance["cap_rounds"]
    assert card.class_ids == [1, 8] and card.metrics["mac_reduction"] > 1.2
    # with a tolerance of 1 no round is refused: rounds go on until nothing is removable or the budget ends
    assert 1 <= len(rounds) <= 3 and [x["round"] for x in rounds] == list(range(1, len(rounds) + 1))
    assert all(a["macs"] > b["macs"] for a, b in zip(rounds, rounds[1:]))
    # the package is the last accepted round's model with only the head sliced to S
    head_macs = (10 - 2) * card.features_dim
    assert card.metrics["macs"] == rounds[-1]["macs"] - head_macs
    _rebuilds_in_torch(out)


@pytest.mark.slow
@pytest.mark.jetpack4
def test_a_confusable_set_gets_a_cascade_that_serves_and_evaluates(tmp_path, small_data):
    """Shirt / T-shirt / pullover at 6x: the specialist alone misses a 2-point budget (5.6 pp), with the
    base answering the frames it doubts it keeps it; the package carries the base, loads in the serving
    plane with it, and ``ocap eval`` reports the fallback share and MACs per frame. (At 3x the
    specialist alone may keep the budget, trained longer, and be the cheapest point.)"""
    from ocap_service.model_slot import load_model as serve

    out = tmp_path / "c026"
    r = run_cli("prune", "--model", "fmnist-cnn", "--data", small_data, "--classes", "0,2,6", "--levels", "6",
                "--time-budget", "900", "--epochs", "4", "--max-loss", "2", "--samples-per-class", "200",
                "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    rows = [p for p in summary["search"]["path"] if p["accepted_as"] == "cascade"]
    assert rows and all(p["loss_pp"] + p["loss_se_pp"] > 2 for p in rows), summary["search"]   # alone: over
    assert all(p["cascade"]["cost"] < 1 and p["cascade"]["loss_pp"] + p["cascade"]["loss_se_pp"] <= 2 for p in rows)
    assert all(p["macs"] < p["cascade"]["macs_per_frame"] < p["macs"] * p["mac_reduction"] for p in rows)
    c = summary["cascade"]
    assert 0 < c["fallback_share"] < 1 and c["mac_reduction_per_frame"] > 1.2, c
    pkg = open_package(str(out))
    assert pkg.card.cascade["fallback"]["version"] == open_package("fmnist-cnn").card.version
    assert load_model(pkg) is not None                             # the specialist rebuilds in torch
    assert serve(str(out)).base is not None
    res = cli("eval", "--model", str(out), "--json", "--latency-runs", "5")
    assert res.returncode == 0, res.stderr
    ev = json.loads(res.stdout)
    assert 0 < ev["fallback_share"] < 1 and ev["macs"] > ev["specialist_macs"]


def _refuse(constant):
    raise ValueError(f"{constant} is not JSON")


def _strict_json_files(root) -> set:
    """Every *.json under ``root`` parsed by a strict parser (no NaN, Infinity); their names."""
    files = sorted(Path(root).rglob("*.json"))
    for f in files:
        json.loads(f.read_text(encoding="utf-8"), parse_constant=_refuse)
    return {f.name for f in files}


@pytest.mark.slow
def test_every_json_file_of_a_pruned_package_is_strict(pruned):
    assert _strict_json_files(pruned[0]) == {"card.json", "pruning.json"}


@pytest.mark.slow
def test_a_diverging_finetune_writes_strict_json(tmp_path, small_data):
    """card.json held "loss": NaN in the fine-tuning history (strict parsers refuse the file): a loss of
    an epoch that diverged is a missing value, null."""
    out = tmp_path / "diverged"
    r = run_cli("prune", "--model", "fmnist-cnn", "--data", small_data, "--classes", "1,8", "--rule", "personalize",
                "--epochs", "1", "--lr", "1e12", "--samples-per-class", "48", "--out", str(out), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout, parse_constant=_refuse)
    assert _strict_json_files(out) == {"card.json", "pruning.json"}
    history = open_package(str(out)).card.provenance["finetune"]["history"]
    assert None in (history[1]["loss"], history[1]["val_kd"]), history     # it diverged: the epoch-0 weights stay


def test_prune_data_labels_outside_the_models_classes(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 28, 28), np.uint8), y=np.arange(40) % 12)
    r = cli("prune", "--model", "fmnist-cnn", "--data", str(tmp_path / "d.npz"), "--classes", "0,1",
                "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "d.npz: labels 10, 11 are out of range 0..9 (the model's classes)" in r.stderr, r.stderr


def test_pruning_a_pruned_model_is_refused(tmp_path):
    from tests.ocap_daemon.conftest import CANDIDATE_1_8  # a pruned package the engine made

    r = cli("prune", "--model", str(CANDIDATE_1_8), "--classes", "8", "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "always prune from a base model" in r.stderr


@pytest.mark.parametrize("classes,message", [
    ("0,10", "class 10 is out of range 0..9"),
    ("3,3", "class 3 is given more than once"),
    ("", "class set is empty"),
    ("0,1,2,3,4,5,6,7,8,9", "nothing to prune"),
])
def test_bad_class_sets(classes, message, tmp_path):
    r = cli("prune", "--model", "fmnist-cnn", "--classes", classes, "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_too_few_images_names_the_short_classes(tmp_path):
    test = load_dataset("fashion-mnist", "test")
    # 4 trousers; the other images are footwear, which the base never predicts as a trouser
    idx = np.concatenate([np.flatnonzero(test.y == 0)[:200], np.flatnonzero(test.y == 1)[:4],
                          np.flatnonzero(np.isin(test.y, [5, 7, 9]))[:20]])
    np.savez(tmp_path / "few.npz", x=test.x[idx, :, :, 0], y=test.y[idx])
    r = cli("prune", "--model", "fmnist-cnn", "--data", str(tmp_path / "few.npz"), "--classes", "0,1",
            "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "too few training images of observed classes 1 (Trouser): " in r.stderr, r.stderr
    assert "at least 32 per class" in r.stderr and not (tmp_path / "x").exists()
    r = run_cli("prune", "--model", "fmnist-cnn", "--data", str(tmp_path / "few.npz"), "--classes", "0,1",
                "--min-per-class", "2", "--rule", "personalize", "--epochs", "1", "--out", str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr


def test_unknown_scorer_rule_and_selector(tmp_path):
    for flag, value, message in (("--scorer", "magic", "unknown scorer"), ("--rule", "magic", "unknown rule"),
                                 ("--select", "magic", "unknown sample selector")):
        r = cli("prune", "--model", "fmnist-cnn", "--classes", "0,1", flag, value, "--epochs", "1",
                    "--samples-per-class", "8", "--min-per-class", "4", "--out", str(tmp_path / "x"))
        assert r.returncode == 1 and message in r.stderr, r.stderr


@pytest.mark.slow
def test_class_agnostic_scorer_with_a_reference_rule_needs_a_mac_target(tmp_path, small_data):
    r = cli("prune", "--model", "fmnist-cnn", "--data", small_data, "--classes", "0,1", "--scorer", "l1", "--rule", "personalize",
                "--epochs", "1", "--samples-per-class", "8", "--min-per-class", "4", "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "--target-macs" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["l1", "ocap"])
def test_fixed_budget_mode_lands_on_the_target(scorer, tmp_path, small_data):
    r = run_cli("prune", "--model", "fmnist-cnn", "--data", small_data, "--classes", "0,1", "--scorer", scorer, "--epochs", "1",
                "--samples-per-class", "40", "--target-macs", "3", "--out", str(tmp_path / "x"), "--json")
    assert r.returncode == 0, r.stderr
    assert 3 <= json.loads(r.stdout)["mac_reduction"] <= 3.15
