"""Which precision of a personalized candidate goes to the gate (``[personalize] quantize = int8``): its
INT8 child only if, on the held-back cached frames of its classes, it agrees with its FP32 parent within
the loss budget and, measured here when the gate starts, it is faster than that parent. Neither is
assumed: INT8 pays on x86 with VNNI (2x on fmnist-cnn), little without it, and an execution provider
may run the QDQ graph slower than the float one. Otherwise the FP32 candidate goes on alone, and the
reason is an event. The gate then judges the chosen one as it judges any candidate."""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ocap_core.agreement import expected_agreement
from ocap_core.errors import OcapError
from ocap_core.preprocess import preprocess
from ocap_core.runtime import paired_latency
from ocap_service.model_slot import LoadedModel, load_model

from . import gate

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.05          # of INT8 over its FP32 parent: under it, timing noise could pass a model no faster
MIN_FRAMES = 32             # held-back frames of the kept classes to judge the INT8 child on at least


@dataclass(frozen=True)
class Choice:
    """The candidate directory the gate judges, whether it is the INT8 child, why, and the figures
    (for the ``int8`` event)."""

    path: str
    int8: bool
    reason: str
    figures: Dict[str, Any] = field(default_factory=dict)
    model: Optional[LoadedModel] = field(default=None, compare=False, repr=False)   # ``path`` loaded, when it was


def decide(agreement: float, speedup: float, max_loss: float,
           min_speedup: Optional[float] = None) -> Tuple[bool, str]:
    """(keep INT8?, why) from its expected agreement with the FP32 parent (0..1), its measured speedup
    over the parent, the loss budget in points (``[personalize] max_loss``) and the least speedup
    (default ``MIN_SPEEDUP``)."""
    min_speedup = MIN_SPEEDUP if min_speedup is None else min_speedup
    loss = 100.0 * (1.0 - agreement)
    if loss > max_loss:
        return False, (f"INT8 loses {loss:.2f} pp of agreement with its FP32 parent, over the budget of "
                       f"{max_loss:g} pp")
    if speedup < min_speedup:
        return False, f"INT8 is {speedup:.2f}x as fast as its FP32 parent here (needs {min_speedup:.2f}x)"
    return True, f"INT8 kept: {loss:.2f} pp from its FP32 parent (budget {max_loss:g} pp), {speedup:.2f}x as fast"


def choose(fp32_dir: str, int8_dir: Optional[str], images: np.ndarray, labels: np.ndarray, max_loss: float,
           latency_runs: int = 200, **load_args: Any) -> Choice:
    """Judge the INT8 child at ``int8_dir`` against its FP32 parent at ``fp32_dir`` on the held-back
    ``images`` whose cached class (``labels``, the base model's answer when cached) is one of the
    parent's: agreement under the parent's softmax (``expected_agreement``, as the gate's) and
    batch-1 latency of the two sessions side by side, ``latency_runs`` runs each. Both are loaded with
    ``load_args`` (``load_model``'s, the server's). No child, or one that does not load: FP32."""
    if not int8_dir:
        return Choice(fp32_dir, False, "no INT8 child")
    try:
        parent = load_model(fp32_dir, **load_args)
        child = load_model(int8_dir, **load_args)
    except OcapError as e:
        return Choice(fp32_dir, False, f"INT8 not judged: {e}")
    if child.card.parent != parent.version:
        return Choice(fp32_dir, False, f"INT8 model {child.version} is not a child of {parent.version}")
    frames = images[np.isin(labels, parent.card.class_ids)] if len(images) else images
    if len(frames) < MIN_FRAMES:
        return Choice(fp32_dir, False, f"INT8 not judged: {len(frames)} held-back frames of the kept classes, "
                                       f"{MIN_FRAMES} needed")
    ref = parent.predict(frames)
    mine = child.predict(frames)
    kept = parent.card.class_ids
    agreement = expected_agreement(ref.probs, np.searchsorted(kept, mine.class_ids))
    x = preprocess(frames[:1], parent.card.input)
    fp32_ms, int8_ms = paired_latency([parent.session, child.session], x, runs=latency_runs)
    # the rule reads the figures as recorded, so the reason and the record never disagree in a digit
    agreement, speedup = round(agreement, 4), round(fp32_ms / int8_ms, 3)
    keep, why = decide(agreement, speedup, max_loss)
    figures = {"int8_version": child.version, "fp32_version": parent.version, "frames": int(len(frames)),
               "agreement": agreement, "hard_agreement": round(float(np.mean(ref.class_ids == mine.class_ids)), 4),
               "fp32_ms": round(fp32_ms, 4), "int8_ms": round(int8_ms, 4), "speedup": speedup,
               "max_loss": max_loss, "min_speedup": MIN_SPEEDUP, "providers": list(child.providers)}
    log.info("%s (%s)", why, child.version)
    return Choice(int8_dir if keep else fp32_dir, keep, why, figures, child if keep else parent)


def judge(candidate: str, int8: Optional[str], served: LoadedModel, base: LoadedModel, images: np.ndarray,
          labels: np.ndarray, cfg: gate.GateConfig, max_loss: float,
          **load_args: Any) -> Tuple[gate.Verdict, Optional[Choice]]:
    """The gate's verdict on a worker's output: the FP32 ``candidate`` directory and, when the worker
    made one, its INT8 child ``int8``. The child is judged when ``choose`` keeps it over its parent; if
    the gate rejects it, the parent is judged. The choice (None without a child) says which and why, for
    the ``int8`` event. Each directory is loaded once: the session ``choose`` loaded is the gate's."""
    if not int8:
        return gate.check(candidate, served, base, images, cfg, **load_args), None
    choice = choose(candidate, int8, images, labels, max_loss, latency_runs=cfg.latency_runs, **load_args)
    if choice.int8:
        verdict = gate.check(int8, served, base, images, cfg, loaded=choice.model, **load_args)
        if verdict.passed and verdict.model is not None:
            log.info("%s", choice.reason)
            return verdict, choice
        choice = dataclasses.replace(choice, int8=False, path=candidate, model=None,
                                     reason=f"the gate rejected the INT8 child: {verdict.reason}")
    log.info("FP32 candidate goes on alone: %s", choice.reason)
    return gate.check(candidate, served, base, images, cfg, loaded=choice.model, **load_args), choice
