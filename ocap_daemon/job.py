"""The one contract between the controller and the personalization worker: what to personalize and
with which settings, written to the job directory's ``job.json`` and read back by ``python -m
ocap_daemon.worker``. Torch-free, so the daemon builds it; its defaults are the engine's."""

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ocap_core import strict_json
from ocap_core.errors import OcapError
from ocap_core.finetune_spec import FinetuneSpec
from ocap_core.prune_spec import RULE_NAMES, PruneSpec
from ocap_core.search_spec import DEFAULT_MAX_LOSS, DEFAULT_TIME_BUDGET, MIN_PER_CLASS, SearchSpec
from ocap_core.selection import with_outside

from .errors import DaemonError

REQUIRED = ("base", "samples", "classes", "out")
QUANTIZE = ("off", "int8")          # [personalize] quantize
INT8_SUFFIX = "-int8"               # the INT8 child's directory: the candidate's + this


def write_samples(path: Union[str, Path], train: Tuple[np.ndarray, np.ndarray], val: Tuple[np.ndarray, np.ndarray],
                  classes: Sequence[int], outside_share: float = 0.0, seed: int = 0) -> Tuple[int, int]:
    """The job's samples file (``.npz``): the cached images (``x``, the base's answers ``y``) of
    ``classes`` from the training and the held-back split, and of other classes what ``with_outside``
    adds (``outside_share``: their share of the stream while the set was stable), training ones first,
    ``is_val`` marking the held-back ones; readable by the daemon's user only. Returns (training,
    held-back) counts."""
    (x_tr, y_tr), (x_va, y_va) = train, val
    keep_tr = with_outside(y_tr, classes, "train", outside_share, seed)
    keep_va = with_outside(y_va, classes, "val", outside_share, seed + 1)
    n_tr, n_va = len(keep_tr), len(keep_va)
    x = np.concatenate([x_tr[keep_tr], x_va[keep_va]]) if len(x_va) else x_tr[keep_tr]
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, x=x, is_val=np.r_[np.zeros(n_tr, bool), np.ones(n_va, bool)])
    return n_tr, n_va


def read_samples(path: Union[str, Path]) -> Tuple[np.ndarray, np.ndarray]:
    """(images, is_val) from a samples file."""
    with np.load(str(path)) as z:
        return z["x"], z["is_val"].astype(bool)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Job:
    """One personalization: the base package, the samples file (``.npz`` with uint8 ``x`` and bool
    ``is_val``), the observed classes and their shares, where the candidate goes, and the engine's
    settings. ``threads`` is a cap on the worker's torch threads (0: one per idle core). ``quantize``
    ``int8``: the worker also writes an INT8 child of the candidate to ``int8_out``, calibrated on the
    training samples (the gate judges on the held-back ones and decides which of the two goes on)."""

    base: str
    samples: str
    classes: Tuple[int, ...]
    out: str
    class_freqs: Dict[int, float] = field(default_factory=dict)
    scorer: str = "ocap"
    rule: str = "search"
    max_loss: float = DEFAULT_MAX_LOSS
    epochs: int = FinetuneSpec().epochs
    time_budget: float = DEFAULT_TIME_BUDGET
    min_per_class: int = MIN_PER_CLASS
    threads: int = 0
    seed: int = 0
    name: Optional[str] = None
    quantize: str = "off"               # "int8": also an INT8 child of the candidate (``int8_out``)
    cascade: bool = True                # the search may choose a specialist with the base as its fallback

    def __post_init__(self) -> None:
        for key in ("base", "samples", "out", "scorer"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise DaemonError(f"job: {key} = {getattr(self, key)!r}: expected a non-empty string")
        if not self.classes or not all(_int(k) and k >= 0 for k in self.classes):
            raise DaemonError(f"job: classes = {list(self.classes)!r}: expected class ids >= 0")
        if self.rule not in RULE_NAMES:
            raise DaemonError(f"job: rule = {self.rule!r}: expected one of {', '.join(RULE_NAMES)}")
        if not _int(self.threads) or self.threads < 0:
            raise DaemonError(f"job: threads = {self.threads!r}: expected 'auto' or an integer >= 0 (0: auto)")
        for key in ("epochs", "min_per_class", "seed"):
            if not _int(getattr(self, key)) or getattr(self, key) < 0:
                raise DaemonError(f"job: {key} = {getattr(self, key)!r}: expected an integer >= 0")
        for key in ("max_loss", "time_budget"):
            if not _number(getattr(self, key)) or getattr(self, key) < 0:
                raise DaemonError(f"job: {key} = {getattr(self, key)!r}: expected a number >= 0")
        if not all(_int(k) and _number(v) for k, v in self.class_freqs.items()):
            raise DaemonError(f"job: class_freqs = {self.class_freqs!r}: expected class id -> share")
        if self.name is not None and not isinstance(self.name, str):
            raise DaemonError(f"job: name = {self.name!r}: expected a string")
        if not isinstance(self.cascade, bool):
            raise DaemonError(f"job: cascade = {self.cascade!r}: expected true or false")
        if self.quantize not in QUANTIZE:
            raise DaemonError(f"job: quantize = {self.quantize!r}: expected one of {', '.join(QUANTIZE)}")

    # -- the file ----------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["class_freqs"] = {str(k): v for k, v in self.class_freqs.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Job":
        """A job from its JSON object: required keys present, no unknown ones, ``threads`` "auto" is 0."""
        if not isinstance(d, Mapping):
            raise DaemonError("job: a JSON object expected")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise DaemonError(f"job: missing {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DaemonError(f"job: unknown key(s) {', '.join(unknown)}")
        kw = dict(d)
        if kw.get("threads") == "auto":
            kw["threads"] = 0
        if not isinstance(kw["classes"], list):
            raise DaemonError(f"job: classes = {kw['classes']!r}: expected a list of class ids")
        kw["classes"] = tuple(kw["classes"])
        freqs = kw.get("class_freqs") or {}
        if not isinstance(freqs, Mapping):
            raise DaemonError(f"job: class_freqs = {freqs!r}: expected an object")
        try:
            kw["class_freqs"] = {int(k): v for k, v in freqs.items()}
        except ValueError:
            raise DaemonError(f"job: class_freqs = {freqs!r}: keys must be class ids") from None
        return cls(**kw)

    def write(self, path: Union[str, Path]) -> None:
        """Write ``job.json`` readable by the daemon's user only (it names cached user images)."""
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            strict_json.dump(self.to_dict(), f)

    @classmethod
    def read(cls, path: Union[str, Path]) -> "Job":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DaemonError(f"job file {path}: {e}") from e
        try:
            return cls.from_dict(d)
        except (DaemonError, TypeError) as e:
            raise DaemonError(f"job file {path}: {e}") from e

    @property
    def int8_out(self) -> str:
        """Where the INT8 child of the candidate goes (``quantize = int8``): beside ``out``."""
        return self.out.rstrip("/") + INT8_SUFFIX

    # -- the engine's specs ------------------------------------------------------------------------
    def prune_spec(self) -> PruneSpec:
        """The engine's settings: with the search (the default rule) the time budget is the search's,
        with the fixed rules the fine-tuning's."""
        search = self.rule == "search"
        try:
            return PruneSpec(scorer=self.scorer, rule=self.rule, min_per_class=self.min_per_class,
                             threads=max(1, self.threads), seed=self.seed,
                             search=SearchSpec(max_loss=self.max_loss, time_budget=self.time_budget or DEFAULT_TIME_BUDGET,
                                               cascade=self.cascade),
                             finetune=FinetuneSpec(epochs=self.epochs, time_budget=0.0 if search else self.time_budget,
                                                   seed=self.seed))
        except OcapError as e:
            raise DaemonError(f"job: {e}") from e
