"""Distillation lowers the teacher-student divergence; early stopping restores the best epoch."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ocap_core.data import load_dataset
from ocap_core.errors import OcapError
from ocap_core.finetune import FinetuneSpec, _lr_factor, finetune, kd_loss, mix, recalibrate_bn
from ocap_core.preprocess import InputSpec, preprocess
from ocap_core.structural import PrunableModel
from ocap_core.train import TrainSpec, train_model
from ocap_core.zoo import create_model

pytestmark = pytest.mark.torch
SPEC = InputSpec((1, 28, 28), 1 / 255, (0.286,), (0.353,))
CLASSES = [0, 1, 7]


@pytest.fixture(scope="module")
def teacher_and_data():
    train, val = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "val")
    # seeded: the weights' initialisation draws from torch's global generator, whose state depends on which
    # tests this worker ran before (the suite runs the longest first, spread over workers)
    torch.manual_seed(0)
    teacher = create_model("test_cnn")
    train_model(teacher, train, val, SPEC, TrainSpec(epochs=1, max_train_images=3000, threads=2))
    sub = train.of_classes(CLASSES).subset(np.arange(600))
    return teacher.eval(), torch.from_numpy(preprocess(sub.x, SPEC)), sub.y


def _student(teacher):
    model = copy.deepcopy(teacher)
    pm = PrunableModel(model, (1, 28, 28), "classifier")
    pm.prune({g.root: np.arange(g.width) % 2 == 0 for g in pm.groups})
    pm.slice_head(CLASSES)
    return model.eval()


def _kd(student, x, t):
    with torch.no_grad():
        return float(kd_loss(student(x), t, 2.0))


# mixup trains on blends and is measured on clean images: it closes less of the gap in six epochs
@pytest.mark.parametrize("mixup, factor", [(0.0, 0.7), (0.4, 0.9)])
def test_distillation_lowers_teacher_student_kl(teacher_and_data, mixup, factor):
    teacher, x, _ = teacher_and_data
    with torch.no_grad():
        t = teacher(x)[:, CLASSES]
    student = _student(teacher)
    before = _kd(student, x[400:], t[400:])
    res = finetune(student, x[:400], t[:400], x[400:], t[400:], FinetuneSpec(epochs=6, patience=10, mixup=mixup),
                   teacher=lambda xb: teacher(xb)[:, CLASSES])     # (mixup: the teacher labels each blend)
    after = _kd(res.model, x[400:], t[400:])
    assert after < factor * before, (before, after)
    assert res.history[0]["epoch"] == 0 and res.best_val > res.history[0]["val"]     # agreement improved


def test_labels_mix_in_cross_entropy_and_drive_validation(teacher_and_data):
    teacher, x, y = teacher_and_data
    with torch.no_grad():
        t = teacher(x)[:, CLASSES]
    idx = torch.tensor([CLASSES.index(int(v)) for v in y])
    res = finetune(_student(teacher), x[:400], t[:400], x[400:], t[400:], FinetuneSpec(epochs=3),
                   y=idx[:400], y_val=idx[400:])
    with torch.no_grad():
        acc = float((res.model(x[400:]).argmax(1) == idx[400:]).float().mean())
    assert acc == pytest.approx(res.best_val)


def test_early_stopping_and_time_budget(teacher_and_data):
    teacher, x, _ = teacher_and_data
    with torch.no_grad():
        t = teacher(x)[:, CLASSES]
    res = finetune(_student(teacher), x[:200], t[:200], x[400:], t[400:], FinetuneSpec(epochs=50, patience=1))
    assert res.stopped == "early_stop" and len(res.history) < 51
    res = finetune(_student(teacher), x[:200], t[:200], x[400:], t[400:], FinetuneSpec(epochs=50, time_budget=1e-6))
    assert res.stopped == "time_budget" and len(res.history) == 2


def test_a_time_cap_only_stops_the_same_schedule(teacher_and_data):
    """The search's budgets count epochs: a cap that is not hit trains the very weights of no cap at all
    (a budget would shorten the learning-rate schedule to what fits, so the result would follow the load)."""
    teacher, x, _ = teacher_and_data
    with torch.no_grad():
        t = teacher(x)[:, CLASSES]
    runs = [finetune(_student(teacher), x[:200], t[:200], x[400:], t[400:], FinetuneSpec(epochs=3, time_cap=cap))
            for cap in (0.0, 3600.0)]
    assert [r.stopped for r in runs] == ["epochs", "epochs"]
    for name, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[name]), name
    res = finetune(_student(teacher), x[:200], t[:200], x[400:], t[400:], FinetuneSpec(epochs=50, time_cap=1e-6))
    assert res.stopped == "time_budget" and len(res.history) == 2
    with pytest.raises(OcapError, match="fine-tuning spec"):
        FinetuneSpec(time_cap=-1)


def test_bn_recalibration_matches_batch_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    x = torch.randn(64, 1, 4, 4) * 3 + 2
    recalibrate_bn(model, x, batch_size=64)
    with torch.no_grad():
        ref = model[0](x)
    assert torch.allclose(model[1].running_mean, ref.mean((0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1


def test_bad_spec_and_empty_data():
    with pytest.raises(OcapError, match="beta"):
        FinetuneSpec(beta=2)
    with pytest.raises(OcapError, match="mixup"):
        FinetuneSpec(mixup=-1)
    with pytest.raises(OcapError, match="teacher model"):
        finetune(torch.nn.Linear(2, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(0, 2), torch.zeros(0, 2),
                 FinetuneSpec(mixup=0.4))
    with pytest.raises(OcapError, match="no samples"):
        finetune(torch.nn.Linear(2, 2), torch.zeros(3, 2), F.one_hot(torch.zeros(3).long(), 2).float(),
                 torch.zeros(0, 2), torch.zeros(0, 2), FinetuneSpec(min_confidence=0.99))


def test_mix_blends_each_image_mostly_with_itself_and_is_seeded():
    x = torch.eye(8).view(8, 1, 1, 8)               # image i is the indicator of pixel i
    a, b = mix(x, 0.4, torch.Generator().manual_seed(3)), mix(x, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    a = a.view(8, 8)
    # a convex blend of two images in which the image itself weighs at least a half
    assert bool((a >= 0).all()) and torch.allclose(a.sum(1), torch.ones(8))
    assert bool((a.diagonal() >= 0.5 - 1e-6).all()) and int(((a > 0).sum(1) <= 2).sum()) == 8


def test_step_decay_spans_the_epochs_that_fit_the_budget():
    assert [_lr_factor(e, 10) for e in (1, 4, 5, 8, 9, 10)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert _lr_factor(1, 1) == 1 and _lr_factor(2, 1) == pytest.approx(0.1)    # milestones collapse to one
