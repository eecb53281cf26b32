"""``ocap import``: a user's trained torch model (``file.py:Class`` + state_dict) -> a model package."""

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .build import USER_ARCH_FILE, save_package
from .errors import OcapError
from .package import ModelPackage
from .preprocess import InputSpec
from .zoo import create_model


def read_class_names(path: Path) -> list:
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as e:
        raise OcapError(f"cannot read class names from {path}: {e}") from e
    names = [n for n in names if n]
    if len(names) < 2:
        raise OcapError(f"{path}: needs at least two class names, one per line")
    if len(set(names)) != len(names):
        raise OcapError(f"{path}: class names must be distinct")
    return names


def load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """A state_dict file, also inside a checkpoint dict under 'state_dict' or 'model'."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise OcapError(f"weights file {path} does not exist") from e
    except Exception as e:
        raise OcapError(f"cannot read weights {path} as a state_dict (save with torch.save(model.state_dict())): "
                        f"{e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OcapError(f"{path} does not hold a state_dict of tensors")
    return obj


def import_model(arch: str, weights: Path, input_shape: Tuple[int, int, int], scale: float,
                 mean: Sequence[float], std: Sequence[float], classes_file: Path, out: Path,
                 name: Optional[str] = None, features_module: Optional[str] = None,
                 arch_kwargs: Optional[Dict[str, Any]] = None) -> ModelPackage:
    """Build the user's class, load its weights strictly, check it on the input shape and package it.

    The architecture file is copied into the package (``arch.py``) so the package rebuilds on its own.
    """
    file, sep, cls_name = arch.rpartition(":")
    if not sep or not file.endswith(".py"):
        raise OcapError(f"--arch must be path/file.py:Class, got {arch!r}")
    class_names = read_class_names(classes_file)
    spec = InputSpec(tuple(input_shape), scale, tuple(mean), tuple(std))
    kwargs = dict(arch_kwargs or {})
    model = create_model(arch, in_chans=spec.shape[0], num_classes=len(class_names), **kwargs)
    try:
        model.load_state_dict(load_state_dict(Path(weights)), strict=True)
    except RuntimeError as e:
        raise OcapError(f"weights {weights} do not fit {arch}: {e}") from e
    model.eval()
    try:
        with torch.no_grad():
            out_t = model(torch.zeros(2, *spec.shape))
    except Exception as e:
        raise OcapError(f"{arch} fails on input shape {list(spec.shape)}: {type(e).__name__}: {e}") from e
    if tuple(out_t.shape) != (2, len(class_names)):
        raise OcapError(f"{arch} outputs shape {tuple(out_t.shape[1:])} per image, but {classes_file} lists "
                        f"{len(class_names)} classes")
    with tempfile.TemporaryDirectory() as tmp:
        arch_copy = Path(tmp) / USER_ARCH_FILE
        arch_copy.write_bytes(Path(file).read_bytes())
        return save_package(model, Path(out), name=name or Path(out).name, input_spec=spec,
                            class_names=class_names, arch={"name": f"{USER_ARCH_FILE}:{cls_name}", "kwargs": kwargs},
                            features_module=features_module, extra_files={USER_ARCH_FILE: arch_copy},
                            provenance={"imported_from": {"arch": arch, "weights": str(weights)}})
