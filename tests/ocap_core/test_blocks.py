"""Residual blocks found by tracing (shipped and user nets), removed by the search when they sit at their
floor, and a pruned package without them that reloads and exports to ONNX matching torch."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from ocap_core.blocks import remove_blocks, residual_blocks
from ocap_core.build import PRUNING_FILE, load_model, save_package, write_pruning
from ocap_core.data import load_dataset
from ocap_core.errors import OcapError
from ocap_core.finetune import FinetuneSpec
from ocap_core.measure import count_macs
from ocap_core.package import open_package
from ocap_core.personalize import level_masks
from ocap_core.preprocess import preprocess
from ocap_core.prune_spec import PruneSpec
from ocap_core.scorers import ScoreSpec, score
from ocap_core.search import search
from ocap_core.search_spec import SearchSpec
from ocap_core.structural import PrunableModel
from ocap_core.train import predict_logits
from ocap_core.zoo import create_model, get_config

pytestmark = pytest.mark.torch
SHAPE = (1, 28, 28)


class UserResidual(nn.Module):
    """A user's residual net written without our block classes: x + body(x), and one block that
    changes width (not removable)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.widen = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.body(x)
        return self.fc(self.widen(x).mean((2, 3)))


class Tower(nn.Module):
    """A residual block inside a residual block: only the innermost is a candidate."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Residual()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return x + self.conv(self.inner(x))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.add(self.conv(x), x)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.tower = Tower()
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.tower(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("make,expected", [
    (lambda: create_model("resnet20"), ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
                                        "layer3.2"]),
    (lambda: create_model("cnn"), []),
    (UserResidual, []),                       # `body` is not a module that adds: the root does
    (Nested, ["tower.inner"]),
])
def test_residual_blocks_are_found_by_tracing(make, expected):
    assert residual_blocks(make().eval(), SHAPE) == expected


def test_mobilenet_blocks_are_those_with_an_identity_shortcut():
    model = create_model("mobilenetv2").eval()
    found = residual_blocks(model, SHAPE)
    assert found and all(model.get_submodule(b).use_res for b in found)
    assert {n for n, m in model.named_modules() if getattr(m, "use_res", False)} == set(found)


def test_removing_blocks_keeps_a_working_model_and_names_a_missing_one():
    model = create_model("resnet20").eval()
    macs = count_macs(model, SHAPE)
    remove_blocks(model, ["layer1.0", "layer3.2"])
    assert isinstance(model.layer1[0], nn.Identity) and isinstance(model.layer3[2], nn.Identity)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)
    assert count_macs(model, SHAPE) < macs
    with pytest.raises(OcapError, match="no block 'layer9.0'"):
        remove_blocks(model, ["layer9.0"])


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", "test")


def test_search_removes_blocks_at_their_floor_and_the_package_reloads(fmnist, tmp_path):
    pkg = open_package("fmnist-resnet20")
    model, shape = load_model(pkg), tuple(pkg.card.input.shape)
    clf = get_config(pkg.card.arch["name"]).classifier
    cls = [1, 8]
    idx = np.flatnonzero(np.isin(fmnist.y, cls))[:144]
    x = torch.from_numpy(preprocess(fmnist.x[idx], pkg.card.input))
    x_tr, x_val = x[:96], x[96:]
    t_tr, t_val = predict_logits(model, x_tr)[:, cls], predict_logits(model, x_val)[:, cls]
    table = score("ocap", model, x_tr, predict_logits(model, x_tr).argmax(1).numpy(), 10,
                  ScoreSpec(keep_share=0.05, images_per_class=30))
    levels = level_masks(model, PrunableModel(model, shape, clf), table, cls, PruneSpec().resolve("resnet"), clf,
                         shape, None)
    top = levels.ceiling() * (1 - 1e-9)            # the last level: every group at its floor
    ss = SearchSpec(levels=(2.0, top), time_budget=3600, step_epochs=1, polish=False)
    res = search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val, ss, FinetuneSpec(epochs=1),
                 measure=lambda m: 1.0)
    assert res.removed_blocks == residual_blocks(model, shape)      # all seven sit at their floor
    assert res.path[-1]["removed_blocks"] == res.removed_blocks and res.path[-1]["accepted"]
    assert res.path[-1]["macs"] < res.path[-2]["macs"]
    assert all(isinstance(res.model.get_submodule(b), nn.Identity) for b in res.removed_blocks)

    with_blocks = search(model, clf, shape, cls, levels, x_tr, t_tr, x_val, t_val,
                         SearchSpec(levels=(2.0, top), time_budget=3600, step_epochs=1, polish=False),
                         FinetuneSpec(epochs=1), measure=lambda m: 1.0 if count_macs(m, shape) >= res.path[-2]["macs"]
                         else 0.0)
    assert with_blocks.removed_blocks == [] and not with_blocks.path[-1]["accepted"]   # validation said no

    # the package: ONNX within tolerance of torch (save_package checks it), and load_model rebuilds it
    pruning = write_pruning(tmp_path / PRUNING_FILE, pkg.card.arch, 10, res.history, res.removed_blocks)
    out = save_package(res.model, tmp_path / "pkg", name="blocks", input_spec=pkg.card.input,
                       class_names=pkg.card.class_names, arch=dict(pkg.card.arch), class_ids=cls,
                       extra_files={PRUNING_FILE: pruning}, parity_inputs=x_val)
    assert out.card.metrics["onnx_parity_scaled_diff"] <= 1e-4
    rebuilt = load_model(open_package(str(out.path)))
    assert torch.allclose(predict_logits(rebuilt, x_val), predict_logits(res.model, x_val), atol=1e-5)
