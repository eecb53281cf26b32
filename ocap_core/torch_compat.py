"""What differs between the torch versions the worker runs on: 1.10 (NVIDIA's wheel for JetPack 4.6,
Python 3.6) and >= 2.0. Everything else ocap calls exists in both."""

import inspect
from pathlib import Path
from typing import Any, Dict

import torch


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# torch.load(weights_only=) is 1.13+: there it refuses pickled code; 1.10 has no such guard, so its
# callers read only files ocap wrote or the user named
LOAD_WEIGHTS_ONLY = _accepts(torch.load, "weights_only")
# torch.onnx.export(dynamo=) is 2.5+, whose default moved to the dynamo exporter in 2.9; before that
# the TorchScript exporter is the only one
EXPORT_DYNAMO = _accepts(torch.onnx.export, "dynamo")


def load_tensors(path: Path) -> Any:
    """``torch.load`` of a state_dict file onto the CPU, with ``weights_only`` where torch has it."""
    kwargs: Dict[str, Any] = {"weights_only": True} if LOAD_WEIGHTS_ONLY else {}
    return torch.load(str(path), map_location="cpu", **kwargs)


def export_kwargs() -> Dict[str, Any]:
    """The keyword that keeps ``torch.onnx.export`` on the TorchScript exporter (none where it is the only one)."""
    return {"dynamo": False} if EXPORT_DYNAMO else {}
