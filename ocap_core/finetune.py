"""Label-free fine-tuning of a pruned model (ALGORITHMS.md §6): BN recalibration, then distillation
from the frozen base model's logits at the kept classes, optional cross-entropy on labels, early
stopping on held-back samples (never on test data), budgets in epochs and seconds of work
(``work_clock``: wall time not spent waiting for a core)."""

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import OcapError
from .finetune_spec import FinetuneSpec
from .memory_format import training_format
from .train import augment, predict_logits
from .work_clock import WorkClock

log = logging.getLogger(__name__)
Progress = Callable[[Dict[str, Any]], None]


@dataclass
class FinetuneResult:
    model: nn.Module
    best_epoch: int
    best_val: float
    history: List[Dict[str, Optional[float]]] = field(default_factory=list)   # loss None before training
    stopped: str = "epochs"
    seconds: float = 0.0


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, max_samples: int = 500, batch_size: int = 64) -> None:
    """Reset BN running statistics and re-estimate them (cumulative average) on up to ``max_samples``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) < 2:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    xs = x[:max_samples]
    for i in range(0, len(xs), batch_size):
        if len(xs[i:i + batch_size]) > 1:
            model(xs[i:i + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """t² · KL(softmax(teacher/t) ‖ softmax(student/t)), batch mean."""
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * (t * t)


def mix(x: torch.Tensor, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """Blend each image with a random partner of the batch, weight ~ Beta(alpha, alpha) per image.

    Distilling on blends gives the student the teacher's answers between the cached images, which
    a few hundred images per class do not cover; labels are not mixed (the teacher labels the blend)."""
    n = len(x)
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)))
    lam = torch.from_numpy(rng.beta(alpha, alpha, n).astype(np.float32))
    lam = torch.maximum(lam, 1 - lam).view(n, *([1] * (x.dim() - 1)))
    return lam * x + (1 - lam) * x[torch.randperm(n, generator=gen)]


def _lr_factor(epoch: int, horizon: int) -> float:
    """Step decay ×0.1 after 40% and after 80% of ``horizon`` epochs (``epoch`` counts from 1)."""
    milestones = sorted({max(1, int(horizon * 0.4)), max(1, int(horizon * 0.8))})
    return 0.1 ** sum(epoch > m for m in milestones)


def _val_scores(model: nn.Module, x_val: torch.Tensor, t_val: torch.Tensor, y_val: Optional[torch.Tensor],
                t: float) -> Tuple[float, float]:
    """(agreement with the teacher, or label accuracy; distillation loss) on the held-back images."""
    if len(x_val) == 0:
        return 0.0, 0.0
    logits = predict_logits(model, x_val)
    ref = y_val if y_val is not None else t_val.argmax(1)
    return float((logits.argmax(1) == ref).float().mean()), float(kd_loss(logits, t_val, t))


def finetune(student: nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor, x_val: torch.Tensor,
             teacher_val: torch.Tensor, spec: FinetuneSpec, y: Optional[torch.Tensor] = None,
             y_val: Optional[torch.Tensor] = None, progress: Optional[Progress] = None,
             teacher: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> FinetuneResult:
    """Distil ``teacher_logits`` (N x K, the base's logits at the kept classes) into ``student``.

    ``y`` / ``y_val`` are optional label indices into the K kept classes (-1 = unlabelled); with them
    the loss is (1 − β)·KD + β·CE and validation uses label accuracy, else teacher agreement.
    With ``spec.shift`` / ``spec.hflip`` each batch is augmented and ``teacher`` (images -> the K
    kept logits) labels the augmented images; without augmentation its logits are computed once.
    """
    augmenting = bool(spec.shift or spec.hflip or spec.mixup)
    if augmenting and teacher is None:
        raise OcapError("augmented fine-tuning needs the teacher model")
    clock = WorkClock()                 # budgets count work, not time spent waiting for a core
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    if spec.min_confidence > 0:
        conf = F.softmax(teacher_logits, 1).max(1).values
        keep = conf >= spec.min_confidence
        x, teacher_logits = x[keep], teacher_logits[keep]
        y = y[keep] if y is not None else None
    if len(x) == 0:
        raise OcapError("no samples left to fine-tune on")
    # NHWC weights and batches for the oneDNN kernels where that is safe (``memory_format``): a CNN
    # training step 1.4-1.6x and a ResNet-20 one 1.2-1.3x faster (1 thread, batch 64), so a budget buys
    # more epochs. Batch by batch (a copy of every cached image would double the largest array);
    # contiguous again at the end.
    nhwc = training_format(student, x) == torch.channels_last
    if nhwc:
        student.to(memory_format=torch.channels_last)
    if spec.recalibrate:
        recalibrate_bn(student, x, spec.recal_samples, spec.batch_size)
    for p in student.parameters():
        p.requires_grad_(True)
    if spec.optimizer == "adam":
        opt = torch.optim.AdamW(student.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        opt = torch.optim.SGD(student.parameters(), lr=spec.lr, momentum=spec.momentum,
                              weight_decay=spec.weight_decay)
    horizon = spec.epochs
    val_labels = y_val if (y_val is not None and bool((y_val >= 0).all())) else None

    def key(val: float, val_kd: float) -> Tuple[float, float]:
        # Early stopping on argmax agreement alone stalls once it saturates (1 image of 256 is 0.4 pp):
        # training stopped before its learning-rate decay. The distillation loss keeps moving while the
        # student learns; with labels, their accuracy comes first.
        return (val, -val_kd) if val_labels is not None else (-val_kd, val)

    val, val_kd = _val_scores(student, x_val, teacher_val, val_labels, spec.temperature)
    best = (val, 0, copy.deepcopy(student.state_dict()), key(val, val_kd))
    history: List[Dict[str, Optional[float]]] = [{"epoch": 0, "loss": None, "val": val, "val_kd": val_kd}]
    small_batches = spec.batch_size < 16 or len(x) < 16
    stopped, bad = "epochs", 0
    for epoch in range(1, spec.epochs + 1):
        if epoch == 2 and spec.time_budget:     # the schedule spans the epochs that fit in the budget
            horizon = max(1, min(spec.epochs, int(spec.time_budget / max(clock.elapsed(), 1e-3))))
        for g in opt.param_groups:
            g["lr"] = spec.lr * _lr_factor(epoch, horizon)
        student.train()
        if small_batches:                   # too few samples for batch statistics: keep BN in eval
            for m in student.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = torch.randperm(len(x), generator=gen)
        total, steps = 0.0, 0
        for i in range(0, len(x), spec.batch_size):
            idx = order[i:i + spec.batch_size]
            if len(idx) < 2 and not small_batches:
                continue
            xb, tb = x[idx], teacher_logits[idx]
            if nhwc:
                xb = xb.contiguous(memory_format=torch.channels_last)
            if augmenting:
                xb = augment(xb, spec.shift, spec.hflip, gen)
                if spec.mixup:
                    xb = mix(xb, spec.mixup, gen)
                with torch.no_grad():
                    tb = teacher(xb)
            out = student(xb)
            loss = kd_loss(out, tb, spec.temperature)
            if y is not None:
                yb = y[idx]
                lab = yb >= 0
                if lab.any():
                    loss = (1 - spec.beta) * loss + spec.beta * F.cross_entropy(out[lab], yb[lab])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        val, val_kd = _val_scores(student, x_val, teacher_val, val_labels, spec.temperature)
        history.append({"epoch": epoch, "loss": total / max(steps, 1), "val": val, "val_kd": val_kd})
        if progress:
            progress({"event": "finetune_epoch", "epoch": epoch, "epochs": spec.epochs, "loss": total / max(steps, 1),
                      "val": val})
        if key(val, val_kd) > best[3]:
            best, bad = (val, epoch, copy.deepcopy(student.state_dict()), key(val, val_kd)), 0
        else:
            bad += 1
        if len(x_val) and bad >= spec.patience:
            stopped = "early_stop"
            break
        if any(limit and clock.elapsed() > limit for limit in (spec.time_budget, spec.time_cap)):
            stopped = "time_budget"
            break
    if len(x_val):
        student.load_state_dict(best[2])
    else:                                   # nothing held back: keep the last epoch
        best = (float("nan"), len(history) - 1, None, (0.0, 0.0))
    student.eval()
    if nhwc:
        student.to(memory_format=torch.contiguous_format)
    for p in student.parameters():
        p.requires_grad_(False)
    return FinetuneResult(student, best[1], best[0], history, stopped, clock.wall())
