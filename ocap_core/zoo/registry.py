"""A registry of architectures (after timm's ``register_model``): name -> constructor + config.

Every constructor takes ``in_chans`` and ``num_classes``. Besides registered names, ``tv:NAME``
builds a torchvision model and ``path/file.py:Class`` a user's own ``nn.Module``.
"""

import fnmatch
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch.nn as nn

from ..errors import OcapError


@dataclass(frozen=True)
class ArchConfig:
    """What the rest of ocap needs to know about an architecture.

    ``first_conv`` and ``classifier`` are module names; ``family`` picks per-family defaults of the
    pruning scorers (ALGORITHMS.md §2); ``keep_whole`` names modules never to prune.
    """

    name: str
    family: str
    first_conv: str
    classifier: str
    keep_whole: Tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    config: ArchConfig


_REGISTRY: Dict[str, _Entry] = {}


def register_model(name: str, family: str, first_conv: str, classifier: str,
                   keep_whole: Tuple[str, ...] = ()) -> Callable:
    """Decorator: record ``fn(in_chans, num_classes, **kw) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise OcapError(f"architecture {name!r} registered twice")
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = _Entry(fn, ArchConfig(name, family, first_conv, classifier, keep_whole, doc))
        return fn

    return wrap


def list_archs(pattern: str = "*") -> List[str]:
    """Registered names matching a glob pattern, e.g. ``list_archs("res*")``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_config(name: str) -> ArchConfig:
    if name in _REGISTRY:
        return _REGISTRY[name].config
    if name.startswith("tv:"):
        return ArchConfig(name, "torchvision", "", "")
    if ":" in name:
        return ArchConfig(name, "user", "", "")
    raise OcapError(f"unknown architecture {name!r}; registered: {', '.join(list_archs())}; "
                    f"or 'tv:NAME' (torchvision) or 'path/file.py:Class'")


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give a torchvision model ``in_chans`` input channels by rebuilding its first Conv2d."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.in_channels == in_chans:
                return
            new = nn.Conv2d(in_chans, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.groups if mod.groups == 1 else in_chans, mod.bias is not None)
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], new)
            return
    raise OcapError("the torchvision model has no Conv2d to adapt to the input channels")


def _torchvision(name: str, in_chans: int, num_classes: int, **kwargs: Any) -> nn.Module:
    try:
        import torchvision
    except ImportError as e:
        raise OcapError(f"architecture {name!r} needs torchvision: pip install 'ocap[torch]'") from e
    tv_name = name[3:]
    try:
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
    except (ValueError, KeyError) as e:
        raise OcapError(f"unknown torchvision model {tv_name!r}: {e}") from e
    _replace_first_conv(model, in_chans)
    return model


def load_user_class(spec: str) -> type:
    """``path/file.py:Class`` -> the class, imported from that file (module name from the file stem)."""
    file, _, cls_name = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise OcapError(f"architecture file {path} does not exist (from {spec!r})")
    mod_name = f"ocap_user_arch_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, str(path))
    if module_spec is None or module_spec.loader is None:
        raise OcapError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise OcapError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise OcapError(f"{path} has no nn.Module class {cls_name!r}")
    return cls


def _user_model(spec: str, in_chans: int, num_classes: int, **kwargs: Any) -> nn.Module:
    cls = load_user_class(spec)
    params = inspect.signature(cls).parameters
    args = dict(kwargs)
    for key, value in (("in_chans", in_chans), ("in_channels", in_chans), ("num_classes", num_classes)):
        if key in params and key not in args:
            args[key] = value
    try:
        return cls(**args)
    except TypeError as e:
        raise OcapError(f"cannot construct {spec} with {args}: {e}") from e


def create_model(name: str, in_chans: int = 1, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build an untrained model by registered name, ``tv:NAME`` or ``file.py:Class``."""
    if name in _REGISTRY:
        return _REGISTRY[name].fn(in_chans=in_chans, num_classes=num_classes, **kwargs)
    if name.startswith("tv:"):
        return _torchvision(name, in_chans, num_classes, **kwargs)
    if ":" in name and name.rpartition(":")[0].endswith(".py"):
        return _user_model(name, in_chans, num_classes, **kwargs)
    get_config(name)  # raises the unknown-architecture error
    raise AssertionError("unreachable")
