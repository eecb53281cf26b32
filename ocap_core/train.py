"""Supervised training of a base model with checkpoint selection on the validation split only."""

import copy
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import Dataset
from .errors import OcapError
from .hooks import eval_mode
from .memory_format import training_format
from .preprocess import InputSpec, preprocess

log = logging.getLogger(__name__)
Progress = Callable[[Dict[str, Any]], None]


@dataclass(frozen=True)
class TrainSpec:
    """Hyper-parameters: SGD (Nesterov) with a one-cycle schedule, random-shift and flip augmentation."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 2
    hflip: bool = True
    seed: int = 0
    threads: int = 0
    max_train_images: int = 0      # 0 = all; tests train on a subset

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise OcapError(f"bad training spec: epochs, batch size and lr must be positive ({self})")


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    best_val_accuracy: float
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_tensors(ds: Dataset, spec: InputSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(preprocess(ds.x, spec)), torch.from_numpy(ds.y)


def augment(x: torch.Tensor, shift: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (zero padding) and random horizontal flips."""
    n, c, h, w = x.shape
    if shift:
        p = F.pad(x, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        rows = (torch.arange(h)[None] + dy[:, None])[:, None, :, None].expand(n, c, h, w + 2 * shift)
        p = p.gather(2, rows)
        cols = (torch.arange(w)[None] + dx[:, None])[:, None, None, :].expand(n, c, h, w)
        x = p.gather(3, cols)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else \
            torch.zeros(0)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict_logits(model, x).argmax(1) == y).float().mean()) if len(y) else 0.0


def train_model(model: nn.Module, train: Dataset, val: Dataset, input_spec: InputSpec, spec: TrainSpec,
                progress: Optional[Progress] = None) -> TrainResult:
    """Train ``model`` on ``train``; return the weights of the epoch with the best ``val`` accuracy."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    seed_everything(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    if spec.max_train_images and spec.max_train_images < len(train):
        idx = np.sort(np.random.default_rng(spec.seed).permutation(len(train))[:spec.max_train_images])
        train = train.subset(idx)
    xtr, ytr = to_tensors(train, input_spec)
    xva, yva = to_tensors(val, input_spec)
    # channels-last runs oneDNN's faster conv kernels on CPU (~25% per step) where that is safe
    # (``memory_format``); weights are saved contiguous
    fmt = training_format(model, xtr)
    model = model.to(memory_format=fmt)
    steps = (len(xtr) + spec.batch_size - 1) // spec.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=True,
                          weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, epochs=spec.epochs, steps_per_epoch=steps,
                                                pct_start=0.2)
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history: List[Dict[str, float]] = []
    t_start = time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for step in range(steps):
            idx = order[step * spec.batch_size:(step + 1) * spec.batch_size]
            if len(idx) < 2:
                continue
            xb = augment(xtr[idx], spec.shift, spec.hflip, gen).contiguous(memory_format=fmt)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=spec.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            if progress:
                progress({"event": "step", "epoch": epoch, "epochs": spec.epochs, "step": step + 1,
                          "steps": steps, "loss": total / (step + 1)})
        val_acc = accuracy(model, xva, yva)
        row = {"epoch": epoch, "train_loss": total / steps, "val_accuracy": val_acc,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        log.info("epoch %d/%d loss %.4f val %.4f (%.0f s)", epoch, spec.epochs, row["train_loss"], val_acc,
                 row["seconds"])
        if progress:
            progress({"event": "epoch", **row, "epochs": spec.epochs})
        if val_acc > best[0]:
            best = (val_acc, epoch, copy.deepcopy(model.state_dict()))
    model = model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model, best[1], best[0], history, time.perf_counter() - t_start)


def channel_stats(ds: Dataset, scale: float = 1 / 255) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of ``pixel * scale`` over a dataset (for the card's normalisation)."""
    x = ds.x.reshape(-1, ds.x.shape[-1]).astype(np.float64) * scale
    return tuple(round(float(v), 4) for v in x.mean(0)), tuple(round(float(v), 4) for v in x.std(0))


def train_package(arch: str, data: str, out: Path, spec: TrainSpec, name: Optional[str] = None,
                  command: str = "", progress: Optional[Progress] = None, eval_threads: int = 1):
    """Train ``arch`` on ``data``'s train split, select on val, package it, record test metrics.

    The card gets the training command and spec, the selected epoch, validation accuracy, and the
    accuracy and per-class accuracy on the test split measured through the exported ONNX model.
    """
    from .build import save_package, update_metrics
    from .data import load_dataset
    from .evaluate import evaluate_package
    from .zoo import create_model, get_config

    get_config(arch)
    train, val = load_dataset(data, "train"), load_dataset(data, "val")
    mean, std = channel_stats(train)
    input_spec = InputSpec(train.image_shape, 1 / 255, mean, std)
    model = create_model(arch, in_chans=train.image_shape[0], num_classes=train.num_classes)
    result = train_model(model, train, val, input_spec, spec, progress)
    provenance = {"command": command, "data": data, "train_images": len(train), "val_images": len(val),
                  "train_spec": asdict(spec), "best_epoch": result.best_epoch, "history": result.history,
                  "train_seconds": round(result.seconds, 1), "torch": torch.__version__}
    pkg = save_package(result.model, Path(out), name=name or Path(out).name, input_spec=input_spec,
                       class_names=train.class_names, arch={"name": arch, "kwargs": {}},
                       metrics={"val_accuracy": result.best_val_accuracy}, provenance=provenance)
    test = evaluate_package(pkg, load_dataset(data, "test"), threads=eval_threads)
    return update_metrics(pkg, {"test_accuracy": test["accuracy"], "test_per_class": test["per_class"],
                                "latency_ms": test["latency_ms"], "latency_threads": eval_threads})
