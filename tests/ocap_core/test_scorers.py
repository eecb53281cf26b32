"""Scorers: table shapes on every zoo model, known answers on a hand-built net."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from ocap_core.errors import OcapError
from ocap_core.scorers import SCORERS, ScoreSpec, activation_layers, pick_per_class, score
from ocap_core.zoo import create_model, list_archs

pytestmark = pytest.mark.torch


class ClassChannels(nn.Module):
    """4-channel input; a 1x1 identity conv + BN (identity in eval mode); head reads the pooled channels.
    Images of class k light up input channel k only, so channel k is the one that matters for k."""

    def __init__(self, dead_channel=None):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            self.fc.weight.copy_(torch.eye(4))
            self.fc.bias.zero_()
            if dead_channel is not None:
                self.fc.weight[:, dead_channel] = 0

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def class_images(n_per_class=5):
    x = torch.zeros(4 * n_per_class, 4, 6, 6)
    y = np.repeat(np.arange(4), n_per_class)
    for i, k in enumerate(y):
        x[i, k] = 1.0 + 0.1 * i
    return x, y


def test_activation_scorer_known_answer():
    x, y = class_images()
    t = score("ocap", ClassChannels().eval(), x, y, 4, ScoreSpec(keep_share=0.5, images_per_class=5))
    assert t.layers == ["bn"] and list(t.n) == [5, 5, 5, 5]
    assert np.array_equal(t.M("bn"), np.eye(4))          # class k marks exactly channel k


def test_a_small_layer_still_marks_one_channel_per_image():
    # regression: r = 0.05 on a 4-wide layer put the reference's strict threshold at the largest score,
    # so no image marked anything and the layer collapsed to its fallback channel
    x, y = class_images()
    t = score("ocap", ClassChannels().eval(), x, y, 4, ScoreSpec(keep_share=0.05))
    assert np.array_equal(t.M("bn"), np.eye(4))          # each image marks its class's channel, once


def test_cap_scorer_known_answer():
    x, y = class_images()
    t = score("cap", ClassChannels(dead_channel=3).eval(), x, y, 4, ScoreSpec(images_per_class=5))
    m = t.M("conv")
    assert m.shape == (4, 4) and ((0 <= m) & (m <= 1)).all()
    assert m[3].max() == 0                                 # its output never reaches the loss
    assert m[:3].max() > 0
    assert (t.side["soft_count"]["conv"] <= 4).all() and t.side["soft_count"]["conv"][3] == 0


def test_l1_scorer_known_answer():
    model = ClassChannels()
    with torch.no_grad():
        model.conv.weight.mul_(torch.arange(1.0, 5.0).view(4, 1, 1, 1))
    t = score("l1", model, torch.zeros(1, 4, 6, 6), np.zeros(1, int), 4, ScoreSpec())
    assert t.class_agnostic and np.allclose(t.mean_mag("conv")[:, 2], [1, 2, 3, 4])


@pytest.mark.parametrize("arch", [a for a in list_archs() if a.startswith("test_")] + ["resnet20", "mobilenetv2"])
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_table_shapes_on_zoo_models(arch, scorer):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    x, groups = torch.randn(24, 1, 28, 28), np.arange(24) % 3
    t = score(scorer, model, x, groups, 10, ScoreSpec(images_per_class=4))
    widths = {n: getattr(m, "num_features", getattr(m, "out_channels", None)) for n, m in model.named_modules()}
    assert t.layers and all(t.hits[k].shape == (widths[k], 10) for k in t.layers)
    if not t.class_agnostic:
        assert list(t.n[:3]) == [4, 4, 4] and t.n[3:].sum() == 0
        assert all(((t.M(k) >= 0) & (t.M(k) <= 1)).all() for k in t.layers)


def test_activation_layers_cover_convs_without_bn():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6))
    assert list(activation_layers(model, (1, 12, 12))) == ["0", "3"]


def test_unknown_scorer():
    with pytest.raises(OcapError, match="unknown scorer 'magic'"):
        score("magic", ClassChannels(), torch.zeros(1, 4, 6, 6), np.zeros(1, int), 4, ScoreSpec())


def test_pick_per_class_is_seeded_and_bounded():
    g = np.repeat(np.arange(3), 10)
    a, b = pick_per_class(g, 4, 1), pick_per_class(g, 4, 1)
    assert np.array_equal(a, b) and list(np.bincount(g[a])) == [4, 4, 4]
