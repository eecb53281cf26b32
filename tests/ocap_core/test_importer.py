import json

import numpy as np
import pytest
import torch

from ocap_core.build import load_model
from ocap_core.package import open_package
from ocap_core.runtime import open_session
from tests.helpers import run_cli

pytestmark = pytest.mark.torch

ARCH = '''
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class NoLinearHead(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, num_classes, 3), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.body(x).flatten(1) * 2.0
'''


@pytest.fixture
def user_model(tmp_path):
    (tmp_path / "net.py").write_text(ARCH)
    (tmp_path / "names.txt").write_text("\n".join(f"class{k}" for k in range(10)) + "\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net", tmp_path / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(mod.Net(width=6).state_dict(), tmp_path / "w.pt")
    torch.save(mod.NoLinearHead().state_dict(), tmp_path / "w2.pt")
    return tmp_path


def _import(d, *extra, arch="Net", weights="w.pt"):
    return run_cli("import", "--arch", f"{d}/net.py:{arch}", "--weights", str(d / weights), "--input-shape", "1,28,28",
                   "--mean", "0.286", "--std", "0.353", "--classes", str(d / "names.txt"), "--out", str(d / "pkg"),
                   *extra)


def test_import_round_trip_then_eval(user_model):
    r = _import(user_model, "--arch-kwargs", '{"width": 6}')
    assert r.returncode == 0, r.stderr
    pkg = open_package(str(user_model / "pkg"))
    assert pkg.card.features_dim == 6 and pkg.card.class_names[3] == "class3"
    assert set(pkg.card.files) == {"weights.pt", "model.onnx", "arch.py"}
    (user_model / "net.py").unlink()          # the package carries its own copy of the architecture
    model = load_model(pkg)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(open_session(pkg.onnx_path).run(["logits"], {"input": x})[0] - ref).max() <= 1e-4
    r = run_cli("eval", "--model", str(user_model / "pkg"), "--json", "--latency-runs", "5")
    assert r.returncode == 0, r.stderr
    assert 0.0 <= json.loads(r.stdout)["accuracy"] <= 1.0


def test_import_weights_that_do_not_fit(user_model):
    r = _import(user_model)                    # saved with width 6, built with the default 8
    assert r.returncode == 1 and "do not fit" in r.stderr


def test_import_needs_features_module_without_a_linear_head(user_model):
    r = _import(user_model, arch="NoLinearHead", weights="w2.pt")
    assert r.returncode == 1 and "--features-module" in r.stderr
    r = _import(user_model, "--features-module", "body", arch="NoLinearHead", weights="w2.pt")
    assert r.returncode == 0, r.stderr
    assert open_package(str(user_model / "pkg")).card.features_dim == 10


def test_import_wrong_input_shape(user_model):
    r = run_cli("import", "--arch", f"{user_model}/net.py:Net", "--weights", str(user_model / "w.pt"),
                "--input-shape", "3,28,28", "--mean", "0,0,0", "--std", "1,1,1", "--classes",
                str(user_model / "names.txt"), "--out", str(user_model / "pkg"), "--arch-kwargs", '{"width": 6}')
    assert r.returncode == 1 and "fails on input shape [3, 28, 28]" in r.stderr
