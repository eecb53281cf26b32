"""Turn raw uint8 images into the float tensor a model package expects (numpy only: serving uses it)."""

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import OcapError


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: C x H x W float32 in NCHW order, made from uint8 pixels by
    ``(pixel * scale - mean[c]) / std[c]``."""

    shape: Tuple[int, int, int]
    scale: float = 1 / 255
    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        c = self.shape[0]
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise OcapError(f"input shape must be C,H,W with positive sizes, got {self.shape}")
        if c not in (1, 3):
            raise OcapError(f"input channels must be 1 (gray) or 3 (rgb), got {c}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if len(v) not in (1, c):
                raise OcapError(f"input {key} needs 1 or {c} values, got {list(v)}")
        if any(s <= 0 for s in self.std):
            raise OcapError(f"input std must be positive, got {list(self.std)}")
        if self.layout != "NCHW" or self.dtype != "float32":
            raise OcapError(f"only NCHW float32 inputs are supported, got {self.layout} {self.dtype}")

    @property
    def color(self) -> str:
        return "gray" if self.shape[0] == 1 else "rgb"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["color"] = self.color
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "InputSpec":
        try:
            return cls(shape=tuple(int(v) for v in d["shape"]), scale=float(d["scale"]),
                       mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                       layout=d.get("layout", "NCHW"), dtype=d.get("dtype", "float32"))
        except (KeyError, TypeError, ValueError) as e:
            raise OcapError(f"bad input spec {d!r}: {e}") from e


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# name -> (scale, mean, std, what it means): the usual conventions of trained models' inputs
INPUT_PRESETS: Dict[str, Tuple[float, Tuple[float, ...], Tuple[float, ...], str]] = {
    "unit": (1 / 255, (0.0,), (1.0,), "pixels scaled to 0..1"),
    "raw255": (1.0, (0.0,), (1.0,), "pixels 0..255 as they are (e.g. Keras nets without a Rescaling layer)"),
    "signed": (1 / 255, (0.5,), (0.5,), "pixels scaled to -1..1"),
    "imagenet": (1 / 255, IMAGENET_MEAN, IMAGENET_STD,
                 "0..1, then ImageNet's per-channel mean and std (torchvision's pretrained nets; 3 channels)"),
}
DEFAULT_PRESET = "unit"


def input_spec_for(shape: Tuple[int, int, int], preset: Optional[str] = None, scale: Optional[float] = None,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> InputSpec:
    """An InputSpec from a preset (default ``unit``), each of scale, mean and std overriding it when given."""
    name = preset or DEFAULT_PRESET
    if name not in INPUT_PRESETS:
        raise OcapError(f"--preset: unknown preset {name!r}; choose one of {', '.join(INPUT_PRESETS)}")
    p_scale, p_mean, p_std, _ = INPUT_PRESETS[name]
    if len(shape) == 3 and shape[0] != len(p_mean) and len(p_mean) != 1 and (mean is None or std is None):
        raise OcapError(f"--preset {name} is for {len(p_mean)}-channel inputs, the input shape has {shape[0]}; "
                        f"give --mean and --std, or another preset")
    return InputSpec(tuple(shape), p_scale if scale is None else scale, tuple(p_mean if mean is None else mean),
                     tuple(p_std if std is None else std))


def parse_scale(text: str) -> float:
    """'1/255' or '0.00392' -> a positive finite float; an error naming --scale otherwise."""
    num, sep, den = text.strip().partition("/")
    try:
        value = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError) as e:
        raise OcapError(f"--scale: expected a number or a fraction such as 1/255, got {text!r}") from e
    if not math.isfinite(value) or value <= 0:
        raise OcapError(f"--scale: expected a positive number or a fraction such as 1/255, got {text!r}")
    return value


def as_batch(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Images as given to ``preprocess``, one image made a batch of one (N x H x W [x C])."""
    x = np.asarray(images)
    _, h, w = spec.shape
    if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3) and x.shape[:2] == (h, w)):
        x = x[None]
    return x


def preprocess(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 images (N x H x W, N x H x W x C, or one H x W [x C]) -> float32 N x C x H x W."""
    x = as_batch(images, spec)
    c, h, w = spec.shape
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:3] != (h, w):
        raise OcapError(f"images of shape {tuple(np.shape(images))} do not fit the model input "
                        f"{h}x{w} with {c} channel(s)")
    if x.shape[-1] != c:
        if x.shape[-1] == 3 and c == 1:
            x = (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        elif x.shape[-1] == 1 and c == 3:
            x = np.repeat(x, 3, axis=-1)
        else:
            raise OcapError(f"images with {x.shape[-1]} channels do not fit a model with {c}")
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    out = x.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(spec.scale)
    return np.ascontiguousarray((out - mean) / std, dtype=np.float32)


def parse_floats(text: str, what: str) -> Sequence[float]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5), with an error naming ``what``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise OcapError(f"{what}: expected comma-separated numbers, got {text!r}") from e
