"""What the memory-format rule costs (``ocap bench formats``): a fine-tuning step (batch 64, one thread,
SGD) timed in channels-last (NHWC) and contiguous (NCHW), side by side in one process, on the shipped
bases and on pruned models of each kind: ones the rule keeps in NHWC, and ones it trains in NCHW because
a strided 1x1 conv has too few input channels (``ocap_core/memory_format.py``: oneDNN's AVX2 kernel for
that shape corrupts the heap). Pruned models are cut at a MAC level without fine-tuning: only their
shapes matter for the time of a step.

Where this CPU's best kernels are AVX2, an unsafe model is never timed in NHWC (it would crash the
benchmark); the row says so."""

import statistics
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from .report import run_stamp, targets_table

MODELS = [("fmnist-cnn", 0.0), ("fmnist-cnn", 8.0), ("fmnist-resnet20", 0.0), ("fmnist-resnet20", 4.0),
          ("fmnist-resnet20", 8.0)]
QUICK_MODELS = [("fmnist-cnn", 0.0), ("fmnist-resnet20", 8.0)]
CLASSES = [0, 2, 6]
KEPT_SPEED = 1.2             # the NHWC models' step at least this much faster than NCHW: the speed kept


def pruned(name: str, level: float) -> Tuple[torch.nn.Module, Tuple[int, ...]]:
    """The shipped base ``name``, or a copy pruned for CLASSES to ``level``x fewer MACs (the search's
    floors and class-aware ranking, scored on 32 test images per class; no fine-tuning)."""
    from ocap_core.build import load_model
    from ocap_core.data import load_dataset
    from ocap_core.package import open_package
    from ocap_core.personalize import level_masks
    from ocap_core.preprocess import preprocess
    from ocap_core.prune_spec import PruneSpec
    from ocap_core.scorers import ScoreSpec, score
    from ocap_core.search import prune_copy
    from ocap_core.structural import PrunableModel
    from ocap_core.train import predict_logits
    from ocap_core.zoo import get_config

    pkg = open_package(name)
    base, shape = load_model(pkg), tuple(pkg.card.input.shape)
    if not level:
        return base, shape
    cfg = get_config(pkg.card.arch["name"])
    test = load_dataset("fashion-mnist", "test")
    idx = np.concatenate([np.flatnonzero(test.y == k)[:32] for k in CLASSES])
    x = torch.from_numpy(preprocess(test.x[idx], pkg.card.input))
    table = score("ocap", base, x, predict_logits(base, x).argmax(1).numpy(), len(pkg.card.class_names),
                  ScoreSpec(images_per_class=32))
    spec = PruneSpec().resolve(cfg.family)
    levels = level_masks(base, PrunableModel(base, shape, cfg.classifier), table, CLASSES, spec, cfg.classifier,
                         shape, None)
    return prune_copy(base, cfg.classifier, shape, levels.at(min(level, levels.ceiling())), CLASSES)[0], shape


def step_ms(model: torch.nn.Module, shape: Tuple[int, ...], fmt: torch.memory_format, steps: int) -> float:
    """Milliseconds of one training step (forward, backward, SGD) on a batch of 64 in format ``fmt``."""
    model = model.to(memory_format=fmt).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, *shape).contiguous(memory_format=fmt)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).logsumexp(1).mean().backward()
        opt.step()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps * 1e3


def run(quick: bool = False) -> Dict[str, Any]:
    from ocap_core.measure import count_macs
    from ocap_core.memory_format import channels_last_hazards, training_format

    torch.set_num_threads(1)
    isa = torch.backends.cpu.get_cpu_capability()
    rounds, steps = (3, 5) if quick else (7, 20)
    rows: List[Dict[str, Any]] = []
    for name, level in QUICK_MODELS if quick else MODELS:
        model, shape = pruned(name, level)
        hazards = channels_last_hazards(model)
        chosen = "NHWC" if training_format(model, torch.zeros(1, *shape)) == torch.channels_last else "NCHW"
        nhwc_safe = not hazards or isa.startswith("AVX512")
        times: Dict[str, List[float]] = {"nchw": [], "nhwc": []}
        for _ in range(rounds):                      # alternated: a change in the machine's load hits both
            times["nchw"].append(step_ms(model, shape, torch.contiguous_format, steps))
            if nhwc_safe:
                times["nhwc"].append(step_ms(model, shape, torch.channels_last, steps))
        nchw = statistics.median(times["nchw"])
        nhwc = statistics.median(times["nhwc"]) if times["nhwc"] else None
        rows.append({"model": name, "level": level, "macs": count_macs(model, shape), "hazards": hazards,
                     "chosen": chosen, "nchw_ms": round(nchw, 2), "nhwc_ms": None if nhwc is None else round(nhwc, 2),
                     "speedup": None if nhwc is None else round(nchw / nhwc, 2)})
    return {"rows": rows, "isa": isa, "quick": quick, "rounds": rounds, "steps": steps}


def judge(res: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """The rule keeps NHWC's speed where it allows it: the median speedup of the NHWC models."""
    kept = [r["speedup"] for r in res["rows"] if r["chosen"] == "NHWC" and r["speedup"] is not None]
    if not kept:
        return []
    med = statistics.median(kept)
    return [(f"NHWC step ≥ {KEPT_SPEED}× faster than NCHW where the rule keeps NHWC (median)", f"{med:.2f}×",
             "MET" if med >= KEPT_SPEED else "MISSED")]


def markdown(res: Dict[str, Any], machine: str) -> str:
    lines = [f"## Memory format (`ocap bench formats{' --quick' if res['quick'] else ''}`)", "",
             run_stamp(machine, res["quick"]) + f"; torch's CPU kernels: {res['isa']}. One training step (batch 64, "
             f"1 thread, SGD), NCHW and NHWC alternated, median of {res['rounds']} rounds of {res['steps']} steps. "
             "A model with a strided 1×1 conv on fewer than 16 input channels trains in NCHW (oneDNN's AVX2 kernel "
             "for it writes past its buffer: docs/architecture.md, \"Memory format\"); pruned models are cut for "
             "{0,2,6} without fine-tuning.", "",
             "| model | pruned to | MACs | convs the rule flags | trains in | NCHW ms | NHWC ms | NHWC speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        nhwc = "not run (AVX2 kernels: it would crash)" if r["nhwc_ms"] is None else f"{r['nhwc_ms']:.2f}"
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        level = f"{r['level']:g}×" if r["level"] else "base"
        lines.append(f"| {r['model']} | {level} | {r['macs'] / 1e6:.1f}M | {len(r['hazards'])} | {r['chosen']} | "
                     f"{r['nchw_ms']:.2f} | {nhwc} | {speed} |")
    return "\n".join(lines + targets_table(judge(res))) + "\n"
