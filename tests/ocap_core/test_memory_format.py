"""Fine-tuning never corrupts memory (issue 24): oneDNN's AVX2 weight gradient of a strided 1x1 conv
with few input channels writes past its buffer in channels-last format, so such models train in NCHW.

The crash tests run in a child process (``run_python``), so a native crash fails the test, naming the
signal, instead of ending the run; ``ONEDNN_MAX_CPU_ISA=AVX2`` picks the kernels of the CPUs that
crashed (an AMD EPYC) on any x86 machine, as on this Sapphire Rapids one, where the code before the
fix aborted with ``free(): invalid next size``."""

import json

import pytest
import torch
import torch.nn as nn

from ocap_core.memory_format import MIN_SAFE_CHANNELS, channels_last_hazards, training_format
from tests.helpers import SHIPPED, run_python

pytestmark = pytest.mark.torch
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def net(cin: int, k: int, stride: int, groups: int = 1) -> nn.Module:
    """A stem conv to ``cin`` channels, then the conv under test, a pool and a head."""
    return nn.Sequential(nn.Conv2d(1, cin, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(cin, 21 if groups == 1 else cin, k, stride=stride, padding=k // 2, groups=groups),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(21 if groups == 1 else cin, 3))


@pytest.mark.parametrize("cin,k,stride,groups,hazard", [
    (7, 1, 2, 1, True),                       # ResNet-20's shortcut pruned to 8x fewer MACs: the crash
    (2, 1, 2, 1, True),
    (MIN_SAFE_CHANNELS - 1, 1, 2, 1, True),
    (MIN_SAFE_CHANNELS, 1, 2, 1, False),
    (7, 1, 1, 1, False),                      # unit stride: no scratch copy
    (7, 3, 2, 1, False),                      # not a 1x1 kernel
    (16, 1, 2, 4, True),                      # 4 input channels per group
])
def test_strided_1x1_convs_with_few_input_channels_are_the_hazard(cin, k, stride, groups, hazard):
    model = net(cin, k, stride, groups)
    assert channels_last_hazards(model) == (["2"] if hazard else [])
    x = torch.zeros(4, 1, 14, 14)
    assert training_format(model, x) == (torch.contiguous_format if hazard else torch.channels_last)
    assert training_format(model, torch.zeros(4, 10)) == torch.contiguous_format     # not images


FINETUNE_SHAPE = """
import torch
from tests.ocap_core.test_memory_format import net
from ocap_core.finetune import FinetuneSpec, finetune
torch.set_num_threads(1)
torch.manual_seed(0)
student, x = net(7, 1, 2), torch.randn(256, 1, 14, 14)
teacher = torch.randn(256, 3)
finetune(student, x, teacher, x[:64], teacher[:64], FinetuneSpec(epochs=8, recalibrate=False))
print("ok")
"""


def test_finetune_of_a_strided_1x1_conv_on_7_channels_survives_the_avx2_kernels():
    """The regression test of exactly the crashing shape: 64 x 7 x 14 x 14 into a 1x1, stride-2 conv to
    21 channels, trained by ``finetune`` (the code before the fix aborted here within 8 epochs)."""
    run = run_python(FINETUNE_SHAPE, env=AVX2, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.failure


NARROWEST = """
import json, sys
import numpy as np
import torch
from ocap_core.build import load_model
from ocap_core.blocks import remove_blocks
from ocap_core.data import load_dataset
from ocap_core.finetune import FinetuneSpec, finetune
from ocap_core.memory_format import channels_last_hazards
from ocap_core.package import open_package
from ocap_core.personalize import level_masks
from ocap_core.preprocess import preprocess
from ocap_core.prune_spec import PruneSpec
from ocap_core.scorers import ScoreSpec, score
from ocap_core.search import prune_copy
from ocap_core.structural import PrunableModel
from ocap_core.train import predict_logits
from ocap_core.zoo import get_config

name, rule = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
pkg = open_package(name)
base, shape = load_model(pkg), tuple(pkg.card.input.shape)
cfg = get_config(pkg.card.arch["name"])
cls = [0, 2, 6]
data = load_dataset("fashion-mnist", "test")
idx = np.flatnonzero(np.isin(data.y, cls))[:96]
x = torch.from_numpy(preprocess(data.x[idx], pkg.card.input))
logits = predict_logits(base, x)
table = score("ocap", base, x, logits.argmax(1).numpy(), 10, ScoreSpec(images_per_class=16))
spec = PruneSpec(rule=rule).resolve(cfg.family)
levels = level_masks(base, PrunableModel(base, shape, cfg.classifier), table, cls, spec, cfg.classifier, shape, None)
masks = levels.at(levels.ceiling() * (1 - 1e-9))
model = prune_copy(base, cfg.classifier, shape, masks, cls)[0]
model = remove_blocks(model, levels.blocks_at_floor(masks))
widths = sorted({m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)})
t = logits[:, cls]
finetune(model, x[:64], t[:64], x[64:], t[64:], FinetuneSpec(epochs=2, batch_size=16))
print(json.dumps({"hazards": channels_last_hazards(model), "min_width": widths[0], "ceiling": levels.ceiling()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["search", "personalize"])
@pytest.mark.parametrize("name", SHIPPED)
def test_the_narrowest_model_of_each_family_fine_tunes(name, rule):
    """Every group at its floor (the search's floors, or the fixed rules' single channel), blocks at
    their floor removed, fine-tuned on the AVX2 kernels: whatever widths pruning leaves, no crash."""
    run = run_python(NARROWEST, name, rule, env=AVX2, timeout=600)
    assert run.returncode == 0, run.failure
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["ceiling"] > 2
    if name == "fmnist-resnet20" and rule == "search":   # it prunes the residual stream, and so narrows
        assert out["hazards"], out                      # the shortcut convs below a vector: the crash's shape
