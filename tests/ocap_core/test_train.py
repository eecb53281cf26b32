import json

import numpy as np
import pytest
import torch

from ocap_core.build import load_model
from ocap_core.data import load_dataset
from ocap_core.package import open_package
from ocap_core.preprocess import preprocess
from ocap_core.train import augment
from tests.helpers import built_once, run_cli

pytestmark = [pytest.mark.torch, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    def build(d):
        r = run_cli("train", "--model", "test_cnn", "--epochs", "2", "--max-train-images", "4000",
                    "--threads", "2", "--out", str(d / "tiny"), "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        (d / "summary.json").write_text(r.stdout)

    d = built_once(tmp_path_factory, "train-tiny", build)
    return d / "tiny", json.loads((d / "summary.json").read_text())


def test_short_training_beats_chance_by_a_wide_margin(trained):
    out, summary = trained
    assert summary["test_accuracy"] > 0.5          # chance is 0.1
    card = open_package(str(out)).card
    assert card.metrics["test_accuracy"] == summary["test_accuracy"]
    assert card.provenance["command"].startswith("ocap train --model test_cnn")
    assert 1 <= card.provenance["best_epoch"] <= 2
    assert card.provenance["history"][card.provenance["best_epoch"] - 1]["val_accuracy"] == \
        card.metrics["val_accuracy"]


def test_package_rebuilds_in_torch_and_matches_onnx(trained):
    from ocap_core.runtime import open_session

    pkg = open_package(str(trained[0]))
    model = load_model(pkg)
    x = preprocess(load_dataset("fashion-mnist", "test").x[:16], pkg.card.input)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = open_session(pkg.onnx_path).run(["logits"], {"input": x})[0]
    assert np.abs(ref - got).max() <= 1e-4


def test_training_refuses_to_overwrite(trained):
    r = run_cli("train", "--model", "test_cnn", "--epochs", "1", "--max-train-images", "200",
                "--out", str(trained[0]), "--quiet")
    assert r.returncode == 1 and "already exists" in r.stderr


def test_unknown_architecture_fails_before_loading_data():
    r = run_cli("train", "--model", "resnet21", "--out", "/tmp/never-written", "--quiet")
    assert r.returncode == 1 and "unknown architecture 'resnet21'" in r.stderr


def test_augment_shifts_and_flips_within_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1
    y = augment(x, 2, True, g)
    assert y.shape == x.shape and torch.all(y.sum((1, 2, 3)) == 4)      # a 2x2 blob moved, never cut
    assert len({tuple(torch.nonzero(img[0])[0].tolist()) for img in y}) > 5
