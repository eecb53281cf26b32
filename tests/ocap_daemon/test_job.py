"""The controller-worker job contract: a typed, torch-free dataclass that round-trips through
``job.json`` and refuses a bad field by name."""

import json
import sys
from pathlib import Path

import pytest

from ocap_daemon.errors import DaemonError
from ocap_daemon.job import Job
from tests.helpers import captured

ROOT = Path(__file__).resolve().parents[2]


def _job(**kw) -> Job:
    return Job(**dict(dict(base="/m/base", samples="/j/samples.npz", classes=(1, 8), out="/j/candidate"), **kw))


def test_a_job_round_trips_through_its_file(tmp_path):
    job = _job(class_freqs={1: 0.25, 8: 0.75}, rule="personalize", threads=2, name="cnn-k2", quantize="int8")
    job.write(tmp_path / "job.json")
    assert oct((tmp_path / "job.json").stat().st_mode & 0o777) == "0o600"
    assert Job.read(tmp_path / "job.json") == job
    assert json.loads((tmp_path / "job.json").read_text())["class_freqs"] == {"1": 0.25, "8": 0.75}


def test_the_engine_specs_follow_the_rule():
    search = _job(max_loss=2.0, time_budget=90.0, epochs=7).prune_spec()
    assert search.rule == "search" and search.search.max_loss == 2.0 and search.search.time_budget == 90.0
    assert search.finetune.time_budget == 0.0 and search.finetune.epochs == 7
    fixed = _job(rule="personalize", time_budget=40.0).prune_spec()
    assert fixed.finetune.time_budget == 40.0


def test_the_int8_child_goes_beside_the_candidate():
    assert _job().quantize == "off" and _job(out="/j/candidate/").int8_out == "/j/candidate-int8"


def test_threads_auto_is_zero():
    assert Job.from_dict(dict(_job().to_dict(), threads="auto")).threads == 0


@pytest.mark.parametrize("key,value,message", [
    ("threads", "many", "threads = 'many'"), ("threads", -1, "threads = -1"), ("classes", [], "classes = []"),
    ("classes", "1,8", "classes = '1,8'"), ("rule", "guess", "rule = 'guess'"), ("max_loss", "1", "max_loss = '1'"),
    ("epochs", True, "epochs = True"), ("class_freqs", {"x": 1}, "keys must be class ids"),
    ("colour", "red", "unknown key(s) colour"), ("base", "", "base = ''"),
    ("quantize", "int4", "quantize = 'int4': expected one of off, int8")])
def test_a_bad_field_is_named(key, value, message):
    with pytest.raises(DaemonError) as e:
        Job.from_dict(dict(_job().to_dict(), **{key: value}))
    assert message in str(e.value)


def test_a_missing_key_and_a_broken_file_are_named(tmp_path):
    d = _job().to_dict()
    del d["out"]
    with pytest.raises(DaemonError, match="missing out"):
        Job.from_dict(d)
    (tmp_path / "job.json").write_text("{")
    with pytest.raises(DaemonError, match="job.json"):
        Job.read(tmp_path / "job.json")


def test_the_contract_and_the_engine_specs_load_without_torch():
    code = ("import sys; import ocap_daemon.job, ocap_core.prune_spec, ocap_core.finetune_spec; "
            "print(sorted(m for m in ('torch', 'torchvision', 'torch_pruning') if m in sys.modules))")
    r = captured([sys.executable, "-c", code], cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_samples_file_keeps_the_classes_training_first(tmp_path):
    import numpy as np

    from ocap_daemon.job import read_samples, write_samples

    x = np.arange(8 * 4, dtype=np.uint8).reshape(8, 2, 2)
    train, val = (x[:5], np.array([1, 2, 8, 1, 3])), (x[5:], np.array([8, 3, 1]))
    # training: the 3 of classes 1 and 8, and 3 // 2 = 1 of the others; held back, at an outside share of 0:
    # only those of the classes
    assert write_samples(tmp_path / "s.npz", train, val, [1, 8]) == (4, 2)
    got, is_val = read_samples(tmp_path / "s.npz")
    assert sum(int(g[0, 0]) in (4, 16) for g in got[:4]) == 1            # one of the two outside ones
    assert [int(g[0, 0]) for g in got if int(g[0, 0]) not in (4, 16)] == [0, 8, 12, 20, 28]
    assert is_val.tolist() == [False] * 4 + [True] * 2
    assert oct((tmp_path / "s.npz").stat().st_mode & 0o777) == "0o600"
    # a third of the stream outside the classes: the held-back split keeps 1 outside beside 2 of them
    assert write_samples(tmp_path / "t.npz", train, val, [1, 8], outside_share=1 / 3) == (4, 3)
