"""Offline stand-in for the device's sample cache: stream a dataset's images of the observed classes
through the base model (onnxruntime, as the serving plane does), and keep per predicted class what a
selector chooses for training, and a random reservoir of a fixed hash-chosen share held back for
validation. Images the base predicts as an unobserved class are kept too (``with_outside``): the
personalized model must answer them with one of the observed classes, so it trains and is judged on
them. numpy + onnxruntime only."""

from typing import Optional, Sequence

import numpy as np

from .data import Dataset
from .package import ModelPackage
from .personalize_samples import Samples
from .preprocess import preprocess
from .runtime import open_session, run_batches
from .selection import (
    VAL_SELECTOR,
    image_digest,
    make_selector,
    select_stream,
    split_for,
    val_capacity,
    with_outside,
)

VAL_SHARE = 0.2


def stream_samples(base: ModelPackage, data: Dataset, classes: Sequence[int], selector: str = "kl",
                   per_class: int = 128, seed: int = 0, val_share: float = VAL_SHARE, threads: int = 1,
                   max_stream: Optional[int] = None, outside: bool = True) -> Samples:
    """Images whose true class is in ``classes``, in a seeded random order (a device's stream), offered
    to ``selector`` under the base model's predicted class; returns the selected train and val samples.

    Validation gets its own random reservoir of ``val_capacity(per_class)`` per class. With ``outside``,
    each split also keeps images selected under unobserved predicted classes, as many as the
    selection's ``outside_quota`` gives them.
    """
    pool = data.of_classes(classes)
    order = np.random.default_rng(seed).permutation(len(pool))
    if max_stream:
        order = order[:max_stream]
    x = pool.x[order]
    sess = open_session(base.onnx_path, threads=threads)
    out = run_batches(sess, preprocess(x, base.card.input), outputs=("logits", "features"))
    pred = out["logits"].argmax(1)
    # the split follows the pixels, as in the daemon's cache: the same image always lands in the same split,
    # wherever the data set lives (ids with the file's path made a 4-image class split differently per run)
    is_val = np.asarray([split_for(image_digest(img), val_share) == "val" for img in x])
    chosen = []
    kept = set(classes)
    out_share = float(np.mean(~np.isin(pred, list(kept)))) if len(pred) else 0.0
    for val, cap in ((False, per_class), (True, val_capacity(per_class))):
        sel = make_selector(VAL_SELECTOR if val else selector, capacity=cap, seed=seed + int(val))
        idx = np.flatnonzero(is_val == val)
        picked = select_stream(sel, list(idx), out["features"][idx], pred[idx], out["logits"][idx])
        items = np.asarray([i for k, its in sorted(picked.items()) for i in its if outside or k in kept], np.int64)
        keep = with_outside(pred[items], classes, "val" if val else "train", out_share, seed + 2 + int(val))
        chosen += items[keep].tolist()
    chosen = np.sort(np.asarray(chosen, dtype=np.int64))
    return Samples(x[chosen], is_val[chosen], pool.y[order][chosen])
