"""Accuracy of a model package on labelled images, through onnxruntime (numpy only, no torch)."""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .cascade import FALLBACK_ONNX, cost_per_frame, fallback_answer, falls_back, macs_per_frame
from .data import Dataset
from .errors import OcapError
from .package import ModelPackage
from .preprocess import preprocess
from .runtime import measure_latency, open_session, run_batches


def check_classes(classes: Sequence[int], num_classes: int, what: str = "classes") -> List[int]:
    """Validate a class subset: in range, no duplicates, not empty; returned sorted."""
    cls = [int(k) for k in classes]
    if not cls:
        raise OcapError(f"{what}: the class set is empty")
    bad = [k for k in cls if not 0 <= k < num_classes]
    if bad:
        raise OcapError(f"{what}: class {bad[0]} is out of range 0..{num_classes - 1}")
    if len(set(cls)) != len(cls):
        dup = sorted(k for k in set(cls) if cls.count(k) > 1)
        raise OcapError(f"{what}: class {dup[0]} is given more than once")
    return sorted(cls)


def parse_classes(text: str, num_classes: int) -> List[int]:
    """'0,3,7' -> [0, 3, 7] with errors for bad ids, duplicates and an empty set."""
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise OcapError(f"--classes: expected comma-separated class ids, got {text!r}") from e
    return check_classes(ids, num_classes, "--classes")


def evaluate_package(pkg: ModelPackage, test: Dataset, classes: Optional[Sequence[int]] = None,
                     threads: int = 1, latency_runs: int = 200) -> Dict[str, Any]:
    """Accuracy (over images of ``classes``, default all the model's classes), per-class accuracy
    (None for a class without images), MACs and params from the card, and onnxruntime CPU batch-1 latency.

    With ``classes`` and a model that outputs all of them, ``restricted_accuracy`` is the accuracy when
    the argmax is taken over those classes only (the fair reference for a pruned model).
    """
    card = pkg.card
    if test.num_classes != len(card.class_names):
        raise OcapError(f"dataset {test.name!r} has {test.num_classes} classes, model {card.name} has "
                        f"{len(card.class_names)}")
    ids = np.asarray(card.class_ids)
    cls = check_classes(classes if classes is not None else card.class_ids, len(card.class_names))
    missing = sorted(set(cls) - set(card.class_ids))
    if missing and len(ids) < len(card.class_names):
        raise OcapError(f"model {card.name} outputs classes {card.class_ids}, not {missing}")
    data = test.of_classes(cls)
    if len(data) == 0:
        raise OcapError(f"dataset {test.name!r} has no images of classes {cls}")
    sess = open_session(pkg.onnx_path, threads=threads)
    x = preprocess(data.x, card.input)
    logits = run_batches(sess, x)["logits"]
    if logits.shape[1] != len(ids):
        raise OcapError(f"{pkg.onnx_path} has {logits.shape[1]} outputs, its card lists {len(ids)} class_ids")
    pred = ids[logits.argmax(1)]
    back = None
    if card.cascade is not None:               # the base answers the frames the specialist doubts
        fb_card = card.fallback_card()
        fb_sess = open_session(pkg.path / FALLBACK_ONNX, threads=threads)
        back = falls_back(_softmax(logits), float(card.cascade["tau"]))
        if back.any():
            kept = [fb_card.class_ids.index(k) for k in card.class_ids]
            answer = fallback_answer(_softmax(run_batches(fb_sess, x[back])["logits"]), kept,
                                     float(card.cascade.get("outside_weight", 1.0)))
            pred[back] = np.asarray(fb_card.class_ids)[answer]
    correct = pred == data.y
    out: Dict[str, Any] = {
        "model": card.name, "version": card.version, "classes": cls, "images": int(len(data)),
        "accuracy": float(correct.mean()),
        "per_class": {str(k): float(correct[data.y == k].mean()) if (data.y == k).any() else None for k in cls},
        "class_names": {str(k): card.class_names[k] for k in cls},
        "macs": card.metrics.get("macs"), "params": card.metrics.get("params"),
    }
    if classes is not None and set(cls) <= set(card.class_ids) and back is None:
        cols = [card.class_ids.index(k) for k in cls]
        out["restricted_accuracy"] = float((np.asarray(cls)[logits[:, cols].argmax(1)] == data.y).mean())
        out["restricted_accuracy_means"] = ("accuracy with the argmax over these classes only: the model told "
                                            "which classes occur (the reference of a pruned model)")
    if latency_runs:
        lat = measure_latency(sess, x[:1], runs=latency_runs)
        out["latency_ms"] = lat["median_ms"]
        out["latency_p90_ms"] = lat["p90_ms"]
        out["latency_threads"] = threads
    if back is not None:
        out.update(_cascade_figures(card, back, out, fb_sess if latency_runs else None, x))
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _cascade_figures(card: Any, back: np.ndarray, out: Dict[str, Any], fb_sess: Any, x: np.ndarray) -> Dict[str, Any]:
    """A cascade's figures on these images: the share its base answered, and ``macs`` (and the
    latency) as expected per frame, so that a script dividing MACs compares what a frame costs."""
    share = float(back.mean())
    base_macs = card.metrics.get("base_macs")
    res: Dict[str, Any] = {"tau": float(card.cascade["tau"]), "fallback_share": share,
                           "fallback": card.cascade["fallback"]["version"], "specialist_macs": out["macs"]}
    if out["macs"] is not None and base_macs is not None:
        res["macs"] = macs_per_frame(out["macs"], base_macs, share)
    if fb_sess is not None:
        base_ms = measure_latency(fb_sess, x[:1], runs=200)["median_ms"]
        res.update(specialist_latency_ms=out["latency_ms"], base_latency_ms=base_ms,
                   latency_ms=cost_per_frame(out["latency_ms"], base_ms, share),
                   specialist_latency_p90_ms=out.pop("latency_p90_ms"))
    return res
