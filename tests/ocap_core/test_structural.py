"""Structural pruning through the Torch-Pruning adapter, on every zoo model."""

import copy

import numpy as np
import pytest
import torch

from ocap_core.errors import OcapError
from ocap_core.export import export_onnx, onnx_parity
from ocap_core.structural import PrunableModel, replay_history
from ocap_core.zoo import create_model, get_config, list_archs

pytestmark = pytest.mark.torch
SHAPE = (1, 28, 28)
ARCHS = [a for a in list_archs() if a not in ("vgg16_bn", "vgg11_bn", "mobilenetv2_100", "resnet56")]


def _prunable(arch):
    torch.manual_seed(0)
    base = create_model(arch, num_classes=10).eval()
    model = copy.deepcopy(base)
    return base, model, PrunableModel(model, SHAPE, get_config(arch).classifier)


@pytest.mark.parametrize("arch", ARCHS)
def test_keep_all_reproduces_the_base_on_kept_classes(arch):
    base, model, pm = _prunable(arch)
    pm.prune({g.root: np.ones(g.width, bool) for g in pm.groups})
    pm.slice_head([2, 5, 9])
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(model(x), base(x)[:, [2, 5, 9]], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_random_masks_give_a_valid_exportable_model(arch, tmp_path):
    base, model, pm = _prunable(arch)
    rng = np.random.default_rng(0)
    keep = {g.root: (rng.random(g.width) < 0.4) | (np.arange(g.width) == g.width - 1) for g in pm.groups}
    widths = pm.prune(keep)
    pm.slice_head([0, 3])
    for g in pm.groups:
        for conv in g.convs:
            assert model.get_submodule(conv).out_channels == widths[g.root] == keep[g.root].sum()
    x = torch.randn(3, *SHAPE)
    assert model(x).shape == (3, 2)
    export_onnx(model, SHAPE, tmp_path / "m.onnx")
    assert onnx_parity(model, tmp_path / "m.onnx", x) <= 1e-4
    # the JSON history rebuilds the same model from a fresh base
    again = replay_history(create_model(arch, num_classes=10).eval(), SHAPE, pm.history())
    again.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model.eval()(x))


def test_residual_stream_groups_couple_every_member_of_the_addition():
    _, model, pm = _prunable("resnet20")
    stream = [g for g in pm.groups if g.stream]
    assert len(stream) == 3                        # one per stage
    first = next(g for g in stream if "conv1" in g.members)
    assert {"bn1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(first.members)


def test_depthwise_and_expand_share_one_mask():
    _, model, pm = _prunable("mobilenetv2")
    g = pm.group_of("features.3.conv.1.0")             # a depthwise conv
    assert g.depthwise and "features.3.conv.0.0" in g.members
    keep = {x.root: np.ones(x.width, bool) for x in pm.groups}
    keep[g.root] = np.arange(g.width) % 3 == 0
    pm.prune(keep)
    n = int(keep[g.root].sum())
    assert model.get_submodule("features.3.conv.0.0").out_channels == n
    assert model.get_submodule("features.3.conv.1.0").out_channels == n == model.get_submodule(
        "features.3.conv.1.0").groups


def test_head_slice_must_be_sorted():
    _, _, pm = _prunable("test_cnn")
    with pytest.raises(OcapError, match="ascending"):
        pm.slice_head([7, 1])


def test_empty_or_wrong_masks_are_refused():
    _, _, pm = _prunable("test_cnn")
    g = pm.groups[0]
    with pytest.raises(OcapError, match="removes every channel"):
        pm.prune({g.root: np.zeros(g.width, bool)})
    with pytest.raises(OcapError, match="entries"):
        pm.prune({g.root: np.ones(g.width + 1, bool)})


def test_unsupported_operation_is_named():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.scale = torch.nn.Parameter(torch.ones(4))     # a bare parameter Torch-Pruning guesses about
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x) * self.scale.view(1, -1, 1, 1)
            return self.fc(y.mean((2, 3)))

    with pytest.raises(OcapError, match="unsupported operation.*scale"):
        PrunableModel(Odd(), SHAPE, "fc")
