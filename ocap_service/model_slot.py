"""The served model behind an atomic reference, swapped without dropping a request (DESIGN.md §Processes).

``LoadedModel`` is immutable: an onnxruntime session, the card, and the map from its outputs to
base class ids. ``ModelSlot.current()`` is one attribute read, so a request that took the old model
finishes on it while a swap installs the new one; the old session is released when the last such
request drops its reference. Swaps are single-flight; a failed load leaves the current model serving.
"""

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ocap_core.cascade import FALLBACK_ONNX, fallback_answer, falls_back
from ocap_core.errors import OcapError
from ocap_core.package import ONNX, Card, open_package
from ocap_core.preprocess import as_batch, preprocess
from ocap_core.runtime import PROVIDERS, open_session_with_fallback, short_names

from . import faults

log = logging.getLogger(__name__)

# Frames per onnxruntime run. A run's transient tensors grow with its batch (fmnist-cnn: 1024 frames in
# one run peaked at +235 MB) and glibc keeps much of what a run frees in its heap: the gate's one run
# over every held-back frame left ocapd larger each time the held-back set grew. In runs of 16 that peak
# is +16-34 MB, and 1024 frames take 0.72-0.80x the time of one run (docs/benchmarks.md, "Memory").
PREDICT_CHUNK = 16


@dataclass(frozen=True)
class Predictions:
    """Per image: base class id, softmax confidence over the model's outputs, features if it has them,
    and the whole softmax."""

    class_ids: np.ndarray
    confidence: np.ndarray
    features: Optional[np.ndarray]
    model_version: str
    probs: Optional[np.ndarray] = None      # softmax over the model's outputs (card.class_ids order)
    fell_back: Optional[np.ndarray] = None  # a cascade's: per image, whether its base answered it


@dataclass(frozen=True)
class LoadedModel:
    """One verified package in one onnxruntime session (never mutated; replace it to change models)."""

    card: Card
    path: Path
    session: Any
    providers: Tuple[str, ...]          # onnxruntime's names of the providers the session really got
    loaded_at: float = field(default_factory=time.time)
    asked: Tuple[str, ...] = ()         # the short names asked for, in order
    fallback: str = ""                  # why it got less than asked ("" when it got what it asked for)
    base: Optional["LoadedModel"] = None    # a cascade's fallback: answers the frames the model doubts
    tau: float = 0.0                        # ... those whose top softmax probability is below this
    outside_weight: float = 1.0             # ... weighing its classes outside this model's (``fallback_answer``)

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def class_ids(self) -> List[int]:
        return list(self.card.class_ids)

    def predict(self, images: np.ndarray) -> Predictions:
        """uint8 images (one H×W[×C] or N×H×W[×C]) -> predictions in the base label space. A batch
        runs ``PREDICT_CHUNK`` frames at a time (see there)."""
        faults.point("predict")
        x = preprocess(images, self.card.input)
        inp = self.session.get_inputs()[0].name
        want = ["logits"] + (["features"] if "features" in self.card.outputs else [])
        out = self._run(want, {inp: x[:PREDICT_CHUNK]})
        if len(x) > PREDICT_CHUNK:
            # the whole batch's outputs, made once: pieces kept from run to run split the space runs free
            whole = [np.empty((len(x),) + o.shape[1:], o.dtype) for o in out]
            for i in range(0, len(x), PREDICT_CHUNK):
                for w, o in zip(whole, out if i == 0 else self._run(want, {inp: x[i:i + PREDICT_CHUNK]})):
                    w[i:i + len(o)] = o
            out = whole
        logits = out[0].astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        top = p.argmax(1)
        ids, conf = np.asarray(self.card.class_ids)[top], p[np.arange(len(top)), top]
        back = None
        if self.base is not None:
            back = falls_back(p, self.tau)
            if back.any():
                fb = self.base.predict(as_batch(images, self.card.input)[back])
                base_ids = self.base.class_ids
                col = fallback_answer(fb.probs, [base_ids.index(k) for k in self.card.class_ids], self.outside_weight)
                ids, conf = ids.copy(), conf.copy()
                ids[back], conf[back] = np.asarray(base_ids)[col], fb.probs[np.arange(len(col)), col]
        return Predictions(ids, conf, out[1] if len(out) > 1 else None, self.version, p, back)

    def _run(self, want: List[str], feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        try:
            return self.session.run(want, feed)
        except Exception as e:  # onnxruntime's own error types
            x = next(iter(feed.values()))
            raise OcapError(f"model {self.version}: inference failed on input {tuple(x.shape)}: {e}") from e


def _engine_dir(root: Optional[str], version: str, providers: Sequence[str]) -> Optional[str]:
    """``version``'s own TensorRT engine directory under ``root``, made when TensorRT is asked for: the
    daemon removes a version's engines once it cannot serve again (``ocap_daemon/engine_cache.py``), which it
    could not do in one shared directory whose file names say a graph hash, not a version. A directory
    that cannot be made means no cache (engines are rebuilt at each load), not a failed load."""
    if not root or "tensorrt" not in providers:
        return None
    path = os.path.join(root, version)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        log.warning("model %s: no TensorRT engine cache (%s): engines are rebuilt at each load", version, e)
        return None
    return path


def load_model(path: str, providers: Sequence[str] = ("cpu",), threads: int = 1,
               trt_cache_dir: Optional[str] = None, trt_fp16: bool = True, warmup: int = 3,
               on_fallback: Optional[Callable[[Dict[str, Any]], None]] = None,
               shared_base: Optional[LoadedModel] = None) -> LoadedModel:
    """Verify the package's digests, open its ONNX file and run ``warmup`` batch-1 inferences, then one
    of ``PREDICT_CHUNK`` frames. A cascade's base (its fallback.onnx) is loaded beside it, unless
    ``shared_base`` (the server's base model) is that very file: then it answers for both.

    Providers fall back: one that fails to load is dropped and the session made with the rest, down to
    the CPU (``open_session_with_fallback``); onnxruntime also skips a provider it lacks without saying
    so, and onnxruntime-gpu runs on the CPU when CUDA's libraries are missing. Either way the model
    keeps what it asked for, what it got and why (``fallback``), the load goes on, and ``on_fallback``
    is called once with ``{"model", "asked", "got", "error"}`` (the server records it as an event)."""
    pkg = open_package(path)
    how = dict(providers=providers, threads=threads, trt_cache_dir=trt_cache_dir, trt_fp16=trt_fp16, warmup=warmup,
               on_fallback=on_fallback)
    model = _load_session(pkg.card, pkg.path, pkg.onnx_path, **how)
    if pkg.card.cascade is None:
        return model
    sha = pkg.card.cascade["fallback"]["sha256"]
    if shared_base is not None and shared_base.card.files.get(ONNX) == sha and shared_base.base is None:
        base = shared_base
    else:
        base = _load_session(pkg.card.fallback_card(), pkg.path, pkg.path / FALLBACK_ONNX, **how)
    return dataclasses.replace(model, base=base, tau=float(pkg.card.cascade["tau"]),
                               outside_weight=float(pkg.card.cascade.get("outside_weight", 1.0)))


def _load_session(card: Card, where: Path, onnx_path: Path, providers: Sequence[str], threads: int,
                  trt_cache_dir: Optional[str], trt_fp16: bool, warmup: int,
                  on_fallback: Optional[Callable[[Dict[str, Any]], None]]) -> LoadedModel:
    """``load_model``'s work for one ONNX file of a verified package at ``where`` described by ``card``."""
    trt_cache_dir = _engine_dir(trt_cache_dir, card.version, providers)
    session, failed = open_session_with_fallback(onnx_path, threads=threads, providers=providers,
                                                 trt_cache_dir=trt_cache_dir, trt_fp16=trt_fp16)
    got = tuple(session.get_providers())
    left_out = [p for p in providers if PROVIDERS[p] not in got and not any(f.startswith(p + ":") for f in failed)]
    why = failed + [f"{p}: onnxruntime left it out (not in this build, or its libraries did not load)" for p in left_out]
    fallback = "; ".join(why)
    if fallback:
        log.warning("model %s asked for providers %s but runs on %s: %s", card.version, list(providers),
                    short_names(got), fallback)
    else:
        log.info("model %s runs on %s", card.version, short_names(got))
    model = LoadedModel(card, Path(where), session, got, asked=tuple(providers), fallback=fallback)
    c, h, w = card.input.shape
    blank = np.zeros((h, w) if c == 1 else (h, w, c), np.uint8)
    try:
        logits = session.run(["logits"], {session.get_inputs()[0].name: preprocess(blank, card.input)})[0]
    except Exception as e:  # onnxruntime's own error types: the card's input does not fit the ONNX file
        raise OcapError(f"model {card.version} at {onnx_path}: the card's input {card.input.shape} does not "
                        f"fit the ONNX file: {e}") from e
    if logits.shape[-1] != len(card.class_ids):
        raise OcapError(f"model {card.version} at {onnx_path}: the ONNX file has {logits.shape[-1]} outputs but "
                        f"the card names {len(card.class_ids)} classes {list(card.class_ids)}")
    for _ in range(warmup):
        model.predict(blank)
    if warmup:
        # one run at the largest batch predict makes: TensorRT builds its engine for the batch sizes it has
        # seen, so without this the first batch of 16 (a gate, the teacher, a client's batch) would stop
        # that caller for another engine build, minutes on a Jetson; on the CPU it costs a few ms
        model.predict(np.broadcast_to(blank, (PREDICT_CHUNK,) + blank.shape))
    if fallback and on_fallback is not None:
        on_fallback({"model": model.version, "asked": list(providers), "got": short_names(got), "error": fallback})
    return model


class ModelSlot:
    """The model that answers requests, swapped atomically (the daemon keeps a second slot for the base
    model, the teacher, while a pruned model serves)."""

    def __init__(self, model: LoadedModel) -> None:
        # (model, swaps so far): one reference, replaced whole, so a reader never pairs a model with
        # another swap's count
        self._serving: Tuple[LoadedModel, int] = (model, 0)
        self._swap_lock = threading.Lock()

    def current(self) -> LoadedModel:
        """The model to use for one request (hold the reference for the whole request)."""
        return self._serving[0]

    def serving(self) -> Tuple[LoadedModel, int]:
        """(the current model, the number of swaps that installed it), read together."""
        return self._serving

    @property
    def swaps(self) -> int:
        """Swaps since the slot was made."""
        return self._serving[1]

    def swap(self, path: str, **load_args: Any) -> Tuple[bool, str]:
        """Load and warm up the package at ``path``, then serve it. Returns (ok, reason); on failure,
        or when another swap is already running, the current model keeps serving."""
        return self._swap(lambda: load_model(path, **load_args), path)

    def install(self, model: LoadedModel) -> Tuple[bool, str]:
        """Serve a model that is already loaded (going back to the base model at once)."""
        return self._swap(lambda: model, model.path)

    def _swap(self, get: Callable[[], LoadedModel], what: Any) -> Tuple[bool, str]:
        if not self._swap_lock.acquire(blocking=False):
            return False, "another swap is in progress"
        try:
            try:
                new = get()
            except OcapError as e:
                log.error("swap to %s refused: %s", what, e)
                return False, str(e)
            old, swaps = self._serving
            self._serving = (new, swaps + 1)        # swaps are single-flight: no other writer
            log.info("serving %s (was %s)", new.version, old.version)
            return True, f"serving {new.version}"
        finally:
            self._swap_lock.release()

    def describe(self) -> Dict[str, Any]:
        """The served model's card summary and the swap count, from one reading."""
        m, swaps = self._serving
        return {"version": m.version, "name": m.card.name, "class_ids": m.class_ids, "providers": short_names(m.providers),
                "asked": list(m.asked), "fallback": m.fallback, "loaded_at": m.loaded_at, "swaps": swaps,
                "cascade": None if m.base is None else {"tau": m.tau, "base": m.base.version}}
