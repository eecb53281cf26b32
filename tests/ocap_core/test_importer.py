import json

import numpy as np
import pytest
import torch

from ocap_core.build import load_model
from ocap_core.package import open_package
from ocap_core.runtime import open_session
from tests.helpers import cli, run_cli

pytestmark = [pytest.mark.torch, pytest.mark.jetpack4]

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


class Fixed10(Net):
    """Ten outputs, whatever the class names say."""

    def __init__(self, width=6):
        super().__init__(num_classes=10, width=width)


class NoLinearHead(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, num_classes, 3), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.body(x).flatten(1) * 2.0


class ResNet(nn.Module):
    """A user's residual net with layer names no zoo family uses."""

    def __init__(self, num_classes=10, w=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
                                    nn.Conv2d(2 * w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = (x + self.branch(x)).relu()
        return self.fc(self.down(x))
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
    return cli("import", "--arch", f"{d}/net.py:{arch}", "--weights", str(d / weights), "--input-shape", "1,28,28",
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
    r = cli("eval", "--model", str(user_model / "pkg"), "--json", "--latency-runs", "5")
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
    r = cli("import", "--arch", f"{user_model}/net.py:Net", "--weights", str(user_model / "w.pt"),
                "--input-shape", "3,28,28", "--mean", "0,0,0", "--std", "1,1,1", "--classes",
                str(user_model / "names.txt"), "--out", str(user_model / "pkg"), "--arch-kwargs", '{"width": 6}')
    assert r.returncode == 1 and "fails on input shape [3, 28, 28]" in r.stderr


def _import_with(d, *flags, names="names.txt", weights="w.pt", kwargs='{"width": 6}', arch="Net"):
    return cli("import", "--arch", f"{d}/net.py:{arch}", "--weights", str(d / weights), "--input-shape", "1,28,28",
                   "--classes", str(d / names), "--out", str(d / "pkg"), "--arch-kwargs", kwargs, *flags)


@pytest.mark.parametrize("flags,scale,mean,std,preset,overrides", [
    ([], 1 / 255, [0.0], [1.0], "unit", []),
    (["--preset", "raw255"], 1.0, [0.0], [1.0], "raw255", []),
    (["--preset", "signed"], 1 / 255, [0.5], [0.5], "signed", []),
    (["--scale", "1/255", "--mean", "0.286", "--std", "0.353"], 1 / 255, [0.286], [0.353], "unit",
     ["scale", "mean", "std"]),
    (["--preset", "raw255", "--scale", "2/510", "--std", "0.25"], 1 / 255, [0.0], [0.25], "raw255", ["scale", "std"]),
    (["--scale", "0.5"], 0.5, [0.0], [1.0], "unit", ["scale"]),
])
def test_import_presets_fractions_and_overrides_go_on_the_card(user_model, flags, scale, mean, std, preset, overrides):
    r = _import_with(user_model, *flags)
    assert r.returncode == 0, r.stderr
    card = open_package(str(user_model / "pkg")).card
    assert card.input.scale == pytest.approx(scale) and list(card.input.mean) == mean and list(card.input.std) == std
    assert card.provenance["imported_from"]["preset"] == preset
    assert card.provenance["imported_from"]["overrides"] == overrides


@pytest.mark.parametrize("flags,message", [
    (["--scale", "1/0"], "--scale: expected a number or a fraction such as 1/255, got '1/0'"),
    (["--scale", "one/255"], "--scale: expected a number or a fraction such as 1/255, got 'one/255'"),
    (["--scale=-1/255"], "--scale: expected a positive number"),
    (["--scale", "nan"], "--scale: expected a positive number"),
    (["--preset", "imagenet"], "--preset imagenet is for 3-channel inputs, the input shape has 1"),
])
def test_import_bad_scale_or_preset_is_a_clear_error(user_model, flags, message):
    r = _import_with(user_model, *flags)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (user_model / "pkg").exists()


def test_import_unknown_preset_is_a_usage_error(user_model):
    r = _import_with(user_model, "--preset", "bgr")
    assert r.returncode == 2 and "invalid choice: 'bgr'" in r.stderr


def test_import_class_names_that_do_not_match_the_outputs_are_refused_before_the_weights(user_model):
    """9 names for 10 outputs failed inside load_state_dict with a size mismatch."""
    (user_model / "nine.txt").write_text("\n".join(f"class{k}" for k in range(9)) + "\n")
    r = _import_with(user_model, names="nine.txt")          # the class follows num_classes: the weights say 10
    assert r.returncode == 1 and "Traceback" not in r.stderr and "size mismatch" not in r.stderr, r.stderr
    assert f"{user_model / 'nine.txt'} lists 9 class names, but the weights {user_model / 'w.pt'} have 10 outputs" \
        in r.stderr, r.stderr
    # a class built with 10 outputs whatever the names say: refused before the weights are even read
    r = _import_with(user_model, names="nine.txt", weights="missing.pt", kwargs="{}", arch="Fixed10")
    assert r.returncode == 1 and "does not exist" not in r.stderr, r.stderr
    assert f"{user_model / 'nine.txt'} lists 9 class names, but {user_model}/net.py:Fixed10 outputs shape (10,)" \
        in r.stderr, r.stderr
    r = _import_with(user_model, names="nine.txt", weights="missing.pt", kwargs='{"width": 6, "num_classes": 10}')
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{user_model / 'nine.txt'} lists 9 class names, but --arch-kwargs sets num_classes 10" in r.stderr
    assert _import_with(user_model, kwargs='{"width": 6, "num_classes": 10}').returncode == 0
    load_model(open_package(str(user_model / "pkg")))          # rebuilds: num_classes is not given twice


@pytest.mark.slow
def test_imported_user_model_prunes_and_evaluates(user_model, small_data):
    """A user's own residual net, trained briefly on real Fashion-MNIST, goes import -> prune -> eval."""
    import importlib.util

    from ocap_core.data import load_dataset

    spec = importlib.util.spec_from_file_location("user_net2", user_model / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    train = load_dataset("fashion-mnist", "train")
    x = (torch.from_numpy(train.x[:8000]).float().permute(0, 3, 1, 2) / 255 - 0.286) / 0.353
    y = torch.from_numpy(train.y[:8000])
    torch.manual_seed(0)
    net = mod.ResNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(2):
        for b in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    torch.save(net.state_dict(), user_model / "r.pt")
    assert _import(user_model, arch="ResNet", weights="r.pt").returncode == 0
    out = user_model / "pruned"
    # 60 s of work (the default is 150): the search's levels, not its depth, are what this checks; 3 points
    # (from the 7,000 images, 128 per class: 1.97x at -0.20 pp had a standard error that put it over 1)
    r = run_cli("prune", "--model", str(user_model / "pkg"), "--data", small_data, "--classes", "1,8", "--keep-first", "0",
                "--epochs", "10", "--samples-per-class", "128", "--time-budget", "60", "--max-loss", "3",
                "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["class_ids"] == [1, 8] and summary["mac_reduction"] > 1.2, summary
    card = open_package(str(out)).card
    assert card.parent == open_package(str(user_model / "pkg")).card.version
    # stem and branch end feed one addition: one group (the residual stream), prunable by the search down
    # to its floor (no conv protected with --keep-first 0); the classifier's input keeps 4 per class
    widths = card.provenance["widths"]
    assert set(widths) == {"branch.0", "branch.3", "down.0"} and widths["branch.3"][1] == 16, widths
    assert widths["branch.3"][0] >= 2 and widths["down.0"][0] >= 8, widths
    assert widths["branch.0"][0] < 32 or widths["down.0"][0] < 32 or widths["branch.3"][0] < 16, widths
    r = run_cli("eval", "--model", str(out), "--json", "--latency-runs", "5")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    # a 2-epoch teacher: many test images of classes 1 and 8 are ones it predicts as another class, which a
    # device never caches for them (the search measured 99-100 % agreement on its held-back frames; the
    # test images lost 4.3 points at 4.2x), so the bound here is looser than the benchmark's 1 point
    assert res["classes"] == [1, 8] and res["accuracy"] >= res["base"]["restricted_accuracy"] - 0.06, res


@pytest.mark.parametrize("kwargs,message", [
    ("{bad json", "--arch-kwargs is not valid JSON (Expecting property name enclosed in double quotes at line 1 "
                  "column 2): '{bad json'"),
    ("{'width': 6}", "--arch-kwargs is not valid JSON (Expecting property name enclosed in double quotes"),
    ('{"width": 6', "--arch-kwargs is not valid JSON (Expecting ',' delimiter at line 1 column 12)"),
    ("[6]", "--arch-kwargs must be a JSON object of constructor arguments such as '{\"width\": 32}', got an array: "
            "'[6]'"),
    ("6", "--arch-kwargs must be a JSON object of constructor arguments such as '{\"width\": 32}', got a number"),
    ('"width=6"', "got a string: "),
], ids=["bad-json", "single-quotes", "unclosed", "array", "number", "string"])
def test_import_arch_kwargs_that_are_not_a_json_object_are_one_clear_line(user_model, kwargs, message):
    """Issue 13: --arch-kwargs '{bad json' ended in a json.decoder.JSONDecodeError traceback."""
    r = _import_with(user_model, kwargs=kwargs)
    line = r.stderr.strip()
    assert r.returncode == 1 and "Traceback" not in line and "\n" not in line and message in line, r.stderr
    assert not (user_model / "pkg").exists()


def test_import_arch_kwargs_may_repeat_in_chans_but_not_contradict_the_input_shape(user_model):
    """--arch-kwargs '{"in_chans": 1}' ended in "create_model() got multiple values for keyword argument"."""
    r = _import_with(user_model, kwargs='{"width": 6, "in_chans": 3}')
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--input-shape 1,28,28 has 1 channel(s), but --arch-kwargs sets in_chans 3" in r.stderr
    r = _import_with(user_model, kwargs='{"width": 6, "in_chans": 1}')
    assert r.returncode == 0, r.stderr
    load_model(open_package(str(user_model / "pkg")))          # rebuilds: in_chans is not given twice
