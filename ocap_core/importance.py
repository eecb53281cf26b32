"""The importance table: per prunable channel x per base class, how many samples of the class marked
the channel important (ALGORITHMS.md §2). numpy only; scorers in ``scorers.py`` fill it.

Rows come in blocks, one per layer (a BatchNorm2d or Conv2d name of the *base* model); columns are
the C base classes. ``M = hits / n`` is in [0, 1]. ``mag`` (mean raw score) breaks ties; ``side``
holds per-channel vectors a scorer can give but the table cannot (CAP's soft class count).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import OcapError


@dataclass
class ImportanceTable:
    scorer: str
    layers: List[str]
    hits: Dict[str, np.ndarray]                 # layer -> (C_l, C) float64
    n: np.ndarray                               # (C,) samples seen per class
    mag: Dict[str, np.ndarray] = field(default_factory=dict)    # layer -> (C_l, C) summed raw score
    side: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)  # name -> layer -> (C_l,)
    class_agnostic: bool = False                # l1 / random: the same value in every column

    @classmethod
    def empty(cls, scorer: str, widths: Dict[str, int], num_classes: int, class_agnostic: bool = False
              ) -> "ImportanceTable":
        return cls(scorer, list(widths), {k: np.zeros((w, num_classes)) for k, w in widths.items()},
                   np.zeros(num_classes), {k: np.zeros((w, num_classes)) for k, w in widths.items()},
                   {}, class_agnostic)

    @property
    def num_classes(self) -> int:
        return len(self.n)

    def width(self, layer: str) -> int:
        return self.hits[layer].shape[0]

    def M(self, layer: str) -> np.ndarray:
        """hits / n per class (0 where a class has no samples)."""
        n = np.where(self.n > 0, self.n, 1.0)
        return self.hits[layer] / n

    def mean_mag(self, layer: str) -> np.ndarray:
        n = np.where(self.n > 0, self.n, 1.0)
        return self.mag[layer] / n

    def merge(self, other: "ImportanceTable") -> "ImportanceTable":
        """Counts add up across batches or devices (same scorer, layers and classes)."""
        if (other.scorer, other.layers, other.num_classes) != (self.scorer, self.layers, self.num_classes):
            raise OcapError("cannot merge importance tables of different scorers, layers or classes")
        side = {name: {k: self.side[name][k] + other.side[name][k] for k in self.layers} for name in self.side}
        return ImportanceTable(self.scorer, list(self.layers),
                               {k: self.hits[k] + other.hits[k] for k in self.layers}, self.n + other.n,
                               {k: self.mag[k] + other.mag[k] for k in self.layers}, side, self.class_agnostic)

    def classes_seen(self) -> List[int]:
        return [int(k) for k in np.flatnonzero(self.n > 0)]

    def save(self, path: Path) -> None:
        """Arrays and layer names in an .npz (no pickle)."""
        arrays = {"n": self.n, "layers": np.asarray(self.layers), "scorer": np.asarray(self.scorer),
                  "class_agnostic": np.asarray(self.class_agnostic)}
        for i, k in enumerate(self.layers):
            arrays[f"hits_{i}"] = self.hits[k]
            arrays[f"mag_{i}"] = self.mag[k]
            for name in self.side:
                arrays[f"side_{name}_{i}"] = self.side[name][k]
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "ImportanceTable":
        with np.load(path, allow_pickle=False) as f:
            layers = [str(s) for s in f["layers"]]
            side_names = sorted({key[5:].rsplit("_", 1)[0] for key in f.files if key.startswith("side_")})
            return cls(str(f["scorer"]), layers, {k: f[f"hits_{i}"] for i, k in enumerate(layers)}, f["n"],
                       {k: f[f"mag_{i}"] for i, k in enumerate(layers)},
                       {s: {k: f[f"side_{s}_{i}"] for i, k in enumerate(layers)} for s in side_names},
                       bool(f["class_agnostic"]))


def class_counts(table: ImportanceTable, layer: str, tau: float = 0.0,
                 classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Per channel, how many classes (of ``classes``, default all) mark it: Σ_k 1[M > τ]."""
    m = table.M(layer)
    if classes is not None:
        m = m[:, list(classes)]
    return (m > tau).sum(axis=1)
