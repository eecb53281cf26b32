import json
import re
import sys

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import open_package
from tests.helpers import ROOT, SHIPPED, captured, cli, run_cli


def test_eval_json_reports_the_card_accuracy():
    r = cli("eval", "--model", "fmnist-cnn", "--data", "fashion-mnist", "--json", "--latency-runs", "20")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"accuracy", "per_class", "macs", "params", "latency_ms"} <= set(res)
    assert res["accuracy"] == pytest.approx(open_package("fmnist-cnn").card.metrics["test_accuracy"], abs=5e-4)


def test_eval_with_classes_adds_restricted_accuracy():
    r = cli("eval", "--model", "fmnist-cnn", "--classes", "7,0,3", "--json", "--latency-runs", "0")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["classes"] == [0, 3, 7] and res["images"] == 3000
    assert res["restricted_accuracy"] >= res["accuracy"]
    assert "argmax over these classes only" in res["restricted_accuracy_means"]      # the JSON says it too


def test_every_option_of_the_demo_says_its_default_and_what_it_is():
    r = cli("demo", "--help")
    assert r.returncode == 0
    text = " ".join(re.split(r"^(?:options|optional arguments):", r.stdout, maxsplit=1, flags=re.M)[1].split())   # 3.10+ | 3.8
    for flag, default in (("--rate", "120.0"), ("--budget", "160.0"), ("--max-loss", "1.0"), ("--seed", "0"),
                          ("--threads", "1"), ("--max-seconds", "270.0")):
        after = text[text.index(f"{flag} {flag.strip('-').replace('-', '_').upper()}"):]
        assert f"(default {default})" in after[:400], (flag, after[:400])
    assert "--seed SEED seed of" in text


def test_eval_text_output():
    r = cli("eval", "--model", "fmnist-cnn", "--classes", "1,8", "--latency-runs", "5")
    assert r.returncode == 0, r.stderr
    assert "restricted accuracy" in r.stdout and "Trouser" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "fmnist-cnn", "--classes", "0,10"], "class 10 is out of range 0..9"),
    (["--model", "fmnist-cnn", "--classes", "3,3"], "class 3 is given more than once"),
    (["--model", "fmnist-cnn", "--classes", ","], "class set is empty"),
    (["--model", "fmnist-cnn", "--classes", "a,b"], "comma-separated class ids"),
    (["--model", "fmnist-cnn", "--data", "/nonexistent.npz"], "does not exist"),
])
def test_eval_bad_input(args, message):
    r = cli("eval", *args)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def _npz(path, n, classes=range(10)):
    """``n`` real Fashion-MNIST test images of ``classes`` (round robin) in an .npz."""
    test = load_dataset("fashion-mnist", "test")
    idx = [int(np.flatnonzero(test.y == k)[i // len(classes)]) for i, k in zip(range(n), list(classes) * n)]
    np.savez(path, x=test.x[idx, :, :, 0], y=test.y[idx])
    return str(path)


def test_eval_split_all_scores_every_image_of_a_small_file(tmp_path):
    """A 20-image .npz was scored on one image, a 4-image one crashed with "Mean of empty slice"."""
    for n in (20, 4):
        data = _npz(tmp_path / f"d{n}.npz", n)
        r = cli("eval", "--model", "fmnist-cnn", "--data", data, "--split", "all", "--json", "--latency-runs", "0")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
        assert res["images"] == n and res["accuracy"] >= 0.5
        assert (res["per_class"]["9"] is None) == (n == 4)       # no images of class 9: null, not NaN
        r = cli("eval", "--model", "fmnist-cnn", "--data", data, "--latency-runs", "0")
        assert r.returncode == 1 and "Traceback" not in r.stderr and "Mean of empty slice" not in r.stderr
        assert f"d{n}.npz has too few images ({n}) for a test split" in r.stderr and "--split all" in r.stderr


def test_eval_text_names_the_split():
    r = cli("eval", "--model", "fmnist-cnn", "--split", "val", "--classes", "1", "--latency-runs", "0")
    assert r.returncode == 0 and "on 500 val images" in r.stdout, r.stdout + r.stderr


def test_eval_help_documents_the_default_split():
    r = cli("eval", "--help")
    assert "--split {train,val,test,all}" in r.stdout and "default: test" in r.stdout


def test_eval_class_space_comes_from_the_model(tmp_path):
    """Labels 0..5 only: the class count was taken as the largest label + 1 ("dataset has 6 classes,
    model has 10"); labels outside the model's classes are an error naming them and the file."""
    r = cli("eval", "--model", "fmnist-cnn", "--data", _npz(tmp_path / "six.npz", 12, range(6)), "--split", "all",
                "--json", "--latency-runs", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 12
    np.savez(tmp_path / "out.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.array([1, 11, 10]))
    r = cli("eval", "--model", "fmnist-cnn", "--data", str(tmp_path / "out.npz"), "--split", "all")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "out.npz: labels 10, 11 are out of range 0..9" in r.stderr, r.stderr


def test_usage_error_exit_code():
    assert run_cli("eval").returncode == 2              # a real process: its exit status


def test_models_lists_the_shipped_packages():
    r = cli("models", "--json")
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in json.loads(r.stdout)["models"]] == SHIPPED
    assert "architectures" not in json.loads(r.stdout)           # the zoo needs torch: only with --archs
    text = cli("models").stdout
    assert "92.25 %" in text and "0.9225" not in text, text       # fmnist-cnn's test accuracy, as the README has it


@pytest.mark.torch
def test_models_archs_lists_what_train_builds_but_not_the_suites_own():
    archs = json.loads(cli("models", "--archs", "--json").stdout)["architectures"]
    assert "resnet20" in archs and not any(a.startswith("test_") for a in archs)


def _commands(module: str) -> list:
    """The COMMAND choices ``python -m MODULE --help`` lists."""
    r = captured([sys.executable, "-m", module, "--help"], cwd=str(ROOT),
                 timeout=120)
    assert r.returncode == 0, r.stderr
    block = r.stdout.split("  COMMAND\n", 1)[1].split("\n\n")[0]
    return [line.split()[0] for line in block.splitlines() if line.startswith("    ") and not line.startswith("     ")]


def test_ocap_has_every_packages_commands_and_python_m_ocap_core_the_algorithms_alone():
    everything = _commands("ocap_cli")
    assert everything == ["models", "train", "eval", "import", "prune", "quantize", "bench", "demo"]
    assert _commands("ocap_core") == everything[:6]


def test_ocap_bench_without_the_bench_folder_says_where_it_runs():
    """An installed ocap has no bench/: the command stays and says so, in one line."""
    code = "import sys; sys.modules['bench'] = None; from ocap_cli import main; sys.exit(main(['bench', 'quality']))"
    r = captured([sys.executable, "-c", code], cwd=str(ROOT), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "ocap bench: error: `ocap bench` runs from a source checkout" in r.stderr, r.stderr
