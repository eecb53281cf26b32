"""``ocap import``: a user's trained torch model (``file.py:Class`` + state_dict) -> a model package."""

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .build import USER_ARCH_FILE, save_package
from .errors import OcapError
from .package import ModelPackage
from .preprocess import DEFAULT_PRESET, input_spec_for
from .torch_compat import load_tensors
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
        obj = load_tensors(path)
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


def _weights_outputs(model: torch.nn.Module, state: Dict[str, torch.Tensor], n: int) -> Optional[Tuple[str, int]]:
    """(key, outputs) when the weights' classifier has another number of outputs than the ``n`` the model
    was built with: the last tensor that differs from the model's only in its first dimension, n there."""
    own = model.state_dict()
    found = None
    for key, t in state.items():
        mine = own.get(key)
        if mine is not None and t.shape != mine.shape and t.dim() == mine.dim() and t.dim() >= 1 \
                and mine.shape[0] == n and t.shape[1:] == mine.shape[1:]:
            found = (key, int(t.shape[0]))
    return found


def import_model(arch: str, weights: Path, input_shape: Tuple[int, int, int], scale: Optional[float],
                 mean: Optional[Sequence[float]], std: Optional[Sequence[float]], classes_file: Path, out: Path,
                 name: Optional[str] = None, features_module: Optional[str] = None,
                 arch_kwargs: Optional[Dict[str, Any]] = None, preset: Optional[str] = None) -> ModelPackage:
    """Build the user's class, check it on the input shape and against the class names, load its weights
    strictly and package it.

    The input conventions come from ``preset`` (see ``INPUT_PRESETS``; default ``unit``), and each of
    ``scale``, ``mean``, ``std`` that is given overrides it; the card's provenance records both. The
    architecture file is copied into the package (``arch.py``) so the package rebuilds on its own.
    """
    file, sep, cls_name = arch.rpartition(":")
    if not sep or not file.endswith(".py"):
        raise OcapError(f"--arch must be path/file.py:Class, got {arch!r}")
    class_names = read_class_names(classes_file)
    spec = input_spec_for(tuple(input_shape), preset, scale, mean, std)
    kwargs = dict(arch_kwargs or {})
    if "num_classes" in kwargs:             # given twice otherwise, here and when the package is rebuilt
        if kwargs["num_classes"] != len(class_names):
            raise OcapError(f"{classes_file} lists {len(class_names)} class names, but --arch-kwargs sets "
                            f"num_classes {kwargs['num_classes']}: one name per output, in output order")
        del kwargs["num_classes"]
    if "in_chans" in kwargs:                # the same: it comes from the input shape
        if kwargs["in_chans"] != spec.shape[0]:
            raise OcapError(f"--input-shape {','.join(str(v) for v in spec.shape)} has {spec.shape[0]} channel(s), "
                            f"but --arch-kwargs sets in_chans {kwargs['in_chans']}")
        del kwargs["in_chans"]
    model = create_model(arch, in_chans=spec.shape[0], num_classes=len(class_names), **kwargs)
    model.eval()
    try:            # before the weights: the output count does not depend on them
        with torch.no_grad():
            out_t = model(torch.zeros(2, *spec.shape))
    except Exception as e:
        raise OcapError(f"{arch} fails on input shape {list(spec.shape)}: {type(e).__name__}: {e}") from e
    if tuple(out_t.shape) != (2, len(class_names)):
        raise OcapError(f"{classes_file} lists {len(class_names)} class names, but {arch} outputs shape "
                        f"{tuple(out_t.shape[1:])} per image: one name per output, in output order")
    state = load_state_dict(Path(weights))
    head = _weights_outputs(model, state, len(class_names))
    if head is not None:
        raise OcapError(f"{classes_file} lists {len(class_names)} class names, but the weights {weights} have "
                        f"{head[1]} outputs ({head[0]} {list(state[head[0]].shape)}): one name per output, "
                        f"in output order")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise OcapError(f"weights {weights} do not fit {arch}: {e}") from e
    model.eval()
    given = [k for k, v in (("scale", scale), ("mean", mean), ("std", std)) if v is not None]
    with tempfile.TemporaryDirectory() as tmp:
        arch_copy = Path(tmp) / USER_ARCH_FILE
        arch_copy.write_bytes(Path(file).read_bytes())
        return save_package(model, Path(out), name=name or Path(out).name, input_spec=spec,
                            class_names=class_names, arch={"name": f"{USER_ARCH_FILE}:{cls_name}", "kwargs": kwargs},
                            features_module=features_module, extra_files={USER_ARCH_FILE: arch_copy},
                            provenance={"imported_from": {"arch": arch, "weights": str(weights),
                                                          "preset": preset or DEFAULT_PRESET, "overrides": given}})
