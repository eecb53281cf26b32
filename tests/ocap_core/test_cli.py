import json

import pytest

from ocap_core.package import open_package
from tests.helpers import SHIPPED, run_cli


def test_eval_json_reports_the_card_accuracy():
    r = run_cli("eval", "--model", "fmnist-cnn", "--data", "fashion-mnist", "--json", "--latency-runs", "20")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"accuracy", "per_class", "macs", "params", "latency_ms"} <= set(res)
    assert res["accuracy"] == pytest.approx(open_package("fmnist-cnn").card.metrics["test_accuracy"], abs=5e-4)


def test_eval_with_classes_adds_restricted_accuracy():
    r = run_cli("eval", "--model", "fmnist-cnn", "--classes", "7,0,3", "--json", "--latency-runs", "0")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["classes"] == [0, 3, 7] and res["images"] == 3000
    assert res["restricted_accuracy"] >= res["accuracy"]


def test_eval_text_output():
    r = run_cli("eval", "--model", "fmnist-cnn", "--classes", "1,8", "--latency-runs", "5")
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
    r = run_cli("eval", *args)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_usage_error_exit_code():
    assert run_cli("eval").returncode == 2


def test_models_lists_the_shipped_packages():
    r = run_cli("models", "--json")
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in json.loads(r.stdout)["models"]] == SHIPPED
