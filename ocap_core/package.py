"""Model packages: a directory with ``card.json`` and ``model.onnx`` and/or ``weights.pt``.

The card says how the files were made and what they are (DESIGN.md "Model package"). Loading
verifies every file's sha256 against the card. This module is torch-free: serving uses it.
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import strict_json
from .errors import OcapError
from .preprocess import InputSpec

CARD = "card.json"
ONNX = "model.onnx"
WEIGHTS = "weights.pt"
# the ONNX opset packages are exported at. 13: what JetPack 4.6's onnxruntime(-gpu) 1.10/1.11 (<= 15/16)
# and TensorRT 8.2 load, and torch 1.10 (<= 14) exports; the operators the models use (Conv, Gemm, Relu,
# Clip, Add, MaxPool, GlobalAveragePool, Flatten) are the same there as at later opsets
OPSET = 13
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Card:
    """The contents of ``card.json``."""

    name: str
    version: str
    input: InputSpec
    class_names: List[str]
    class_ids: List[int]
    files: Dict[str, str]
    outputs: List[str] = field(default_factory=lambda: ["logits", "features"])
    features_dim: Optional[int] = None
    arch: Optional[Dict[str, Any]] = None
    parent: Optional[str] = None
    created: str = field(default_factory=utc_now)
    metrics: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    # a specialist served with its base as the fallback (ocap_core/cascade.py): {"tau", "rule",
    # "outside_weight" (1 when absent), "fallback":
    # {"name", "version", "sha256", "class_ids", "outputs"}}; the base's ONNX file is the package's
    # fallback.onnx. None: the model answers every frame itself
    cascade: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if not self.class_ids or len(set(self.class_ids)) != len(self.class_ids):
            raise OcapError(f"card {self.name!r}: class_ids must be distinct and non-empty, got {self.class_ids}")
        if any(not 0 <= k < n for k in self.class_ids):
            raise OcapError(f"card {self.name!r}: class_ids {self.class_ids} outside 0..{n - 1}")
        if list(self.class_ids) != sorted(self.class_ids):
            raise OcapError(f"card {self.name!r}: class_ids must be in ascending base-id order, got {self.class_ids}")
        if "logits" not in self.outputs:
            raise OcapError(f"card {self.name!r}: outputs must include 'logits', got {self.outputs}")
        if self.cascade is not None:
            self._check_cascade(self.cascade)

    def _check_cascade(self, c: Any) -> None:
        from .cascade import FALLBACK_ONNX, RULE

        where = f"card {self.name!r}: cascade"
        if not isinstance(c, dict) or not isinstance(c.get("fallback"), dict):
            raise OcapError(f"{where} must be an object with a 'fallback' object, got {c!r}")
        tau, fb = c.get("tau"), c["fallback"]
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau <= 1:
            raise OcapError(f"{where}: tau must be a number in [0, 1], got {tau!r}")
        weight = c.get("outside_weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            raise OcapError(f"{where}: outside_weight must be a number in (0, 1], got {weight!r}")
        if c.get("rule", RULE) != RULE:
            raise OcapError(f"{where}: unknown rule {c.get('rule')!r} (this ocap knows {RULE!r})")
        ids = fb.get("class_ids")
        if not isinstance(ids, list) or not set(self.class_ids) <= {k for k in ids if isinstance(k, int)}:
            raise OcapError(f"{where}: the fallback's class_ids {ids!r} must include the model's {self.class_ids}")
        if any(not isinstance(k, int) or not 0 <= k < len(self.class_names) for k in ids):
            raise OcapError(f"{where}: the fallback's class_ids {ids!r} must be in 0..{len(self.class_names) - 1}")
        if FALLBACK_ONNX not in self.files or fb.get("sha256") != self.files[FALLBACK_ONNX]:
            raise OcapError(f"{where}: the fallback's sha256 must be that of the package's {FALLBACK_ONNX}")

    def fallback_card(self) -> "Card":
        """A cascade's base as a card of its own (its ONNX file is the package's fallback.onnx)."""
        if self.cascade is None:
            raise OcapError(f"card {self.name!r} ({self.version}) is not a cascade: it has no fallback")
        fb = self.cascade["fallback"]
        return Card(name=str(fb.get("name", self.name)), version=str(fb.get("version", self.parent or "base")),
                    input=self.input, class_names=list(self.class_names), class_ids=[int(k) for k in fb["class_ids"]],
                    files={ONNX: fb["sha256"]}, outputs=list(fb.get("outputs", ["logits"])), arch=self.arch)

    @property
    def num_outputs(self) -> int:
        return len(self.class_ids)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": self.format, "name": self.name, "version": self.version, "parent": self.parent,
            "created": self.created, "files": dict(self.files), "arch": self.arch,
            "input": self.input.to_dict(), "class_names": list(self.class_names),
            "class_ids": list(self.class_ids), "outputs": list(self.outputs),
            "features_dim": self.features_dim, "metrics": self.metrics, "provenance": self.provenance,
            **({"cascade": self.cascade} if self.cascade is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "card") -> "Card":
        if not isinstance(d, dict):
            raise OcapError(f"{where}: expected a JSON object")
        if d.get("format") != FORMAT_VERSION:
            raise OcapError(f"{where}: unsupported card format {d.get('format')!r} (this ocap reads {FORMAT_VERSION})")
        try:
            return cls(name=str(d["name"]), version=str(d["version"]), input=InputSpec.from_dict(d["input"]),
                       class_names=[str(s) for s in d["class_names"]],
                       class_ids=[int(k) for k in d["class_ids"]], files=dict(d["files"]),
                       outputs=list(d.get("outputs", ["logits"])), features_dim=d.get("features_dim"),
                       arch=d.get("arch"), parent=d.get("parent"), created=str(d.get("created", "")),
                       metrics=dict(d.get("metrics") or {}), provenance=dict(d.get("provenance") or {}),
                       cascade=d.get("cascade"))
        except KeyError as e:
            raise OcapError(f"{where}: missing key {e.args[0]!r}") from e
        except OcapError as e:
            raise OcapError(f"{where}: {e}") from e
        except (TypeError, ValueError) as e:
            raise OcapError(f"{where}: {e}") from e


@dataclass(frozen=True)
class ModelPackage:
    """A verified package on disk."""

    path: Path
    card: Card

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def has_onnx(self) -> bool:
        return ONNX in self.card.files

    @property
    def has_weights(self) -> bool:
        return WEIGHTS in self.card.files


def shipped_models() -> List[str]:
    """Names of the base packages that ship inside ocap_core (``fmnist-cnn``, ...)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CARD).is_file())


def resolve_model(name_or_path: str) -> Path:
    """A shipped model name or a package directory -> the package directory."""
    if name_or_path in shipped_models():
        return PRETRAINED_DIR / name_or_path
    path = Path(name_or_path)
    if path.is_dir():
        return path
    known = ", ".join(shipped_models()) or "none installed"
    raise OcapError(f"unknown model {name_or_path!r}: not a shipped model ({known}) and not a package directory")


def read_card(path: Path) -> Card:
    card_path = Path(path) / CARD
    try:
        text = card_path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise OcapError(f"model package {path}: {CARD} is missing") from e
    except OSError as e:
        raise OcapError(f"model package {path}: cannot read {CARD}: {e}") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise OcapError(f"{card_path}: not valid JSON ({e})") from e
    return Card.from_dict(data, where=str(card_path))


def verify_files(path: Path, card: Card, digests: bool = True) -> None:
    """Every file the card lists is a plain name, exists and (``digests``) has the recorded sha256
    (without: a caller that hashes the bytes anyway, as the model store's copy does)."""
    if not card.files:
        raise OcapError(f"{Path(path) / CARD}: lists no files")
    for name, digest in card.files.items():
        if name != os.path.basename(name) or name in ("", ".", ".."):
            raise OcapError(f"{Path(path) / CARD}: file name {name!r} must be a plain name inside the package")
        f = Path(path) / name
        if not f.is_file():
            raise OcapError(f"model package {path}: {name} is missing")
        if not digests:
            continue
        actual = file_sha256(f)
        if actual != digest:
            raise OcapError(f"model package {path}: sha256 of {name} is {actual[:16]}..., the card says "
                            f"{str(digest)[:16]}... (file corrupt or replaced)")


def open_package(name_or_path: str, verify: bool = True) -> ModelPackage:
    """Find, read and (by default) verify a model package."""
    path = resolve_model(str(name_or_path))
    card = read_card(path)
    if verify:
        verify_files(path, card)
    return ModelPackage(path, card)


def write_card(path: Path, card: Card) -> None:
    """Write ``card.json`` atomically (tmp + fsync + rename)."""
    path = Path(path)
    tmp = path / (CARD + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        strict_json.dump(card.to_dict(), f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / CARD)
