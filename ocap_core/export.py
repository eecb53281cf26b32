"""ONNX export with two outputs, ``logits`` and ``features`` (the penultimate vector), dynamic batch.

The features are the input of the final classifier Linear (found by tracing which Linear produced the
model's output), or the flattened output of a module the caller names.
"""

import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .errors import OcapError
from .hooks import eval_mode, forward_hooks, probe
from .package import OPSET
from .torch_compat import export_kwargs


def find_classifier(model: nn.Module, input_shape: Sequence[int]) -> str:
    """Name of the Linear whose output *is* the model's output, or an error asking for it."""
    outputs = {}
    out = probe(model, input_shape, [(m, lambda mod, i, o, n=n: outputs.__setitem__(n, o))
                                     for n, m in model.named_modules() if isinstance(m, nn.Linear)], batch=2)
    for name, o in outputs.items():
        if o is out:
            return name
    raise OcapError("cannot find the final classifier: the model's output does not come straight from an "
                    "nn.Linear; name the module that outputs the penultimate features (--features-module)")


class WithFeatures(nn.Module):
    """Wraps a classifier so that forward returns (logits, features)."""

    def __init__(self, model: nn.Module, module: str, take: str) -> None:
        super().__init__()
        if take not in ("input", "output"):
            raise ValueError(take)
        self.model = model
        self.module_name = module
        self.take = take
        try:
            self._tap = model.get_submodule(module)
        except AttributeError as e:
            raise OcapError(f"the model has no module named {module!r}") from e
        self._seen: Optional[torch.Tensor] = None

    def _hook(self, mod, inp, out) -> None:
        t = inp[0] if self.take == "input" else out
        self._seen = torch.flatten(t, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with forward_hooks([(self._tap, self._hook)]):
            logits = self.model(x)
        feats, self._seen = self._seen, None
        if feats is None:
            raise OcapError(f"module {self.module_name!r} did not run in the forward pass")
        return logits, feats


def with_features(model: nn.Module, input_shape: Sequence[int], classifier: Optional[str] = None,
                  features_module: Optional[str] = None) -> WithFeatures:
    """(logits, features) wrapper: features from ``features_module``'s output, else the classifier's input."""
    if features_module:
        return WithFeatures(model, features_module, "output")
    return WithFeatures(model, classifier or find_classifier(model, input_shape), "input")


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: Path, classifier: Optional[str] = None,
                features_module: Optional[str] = None, features: bool = True) -> None:
    """Write ``model`` (eval mode) to ``path`` with input ``input`` and outputs logits (+ features)."""
    wrapped: nn.Module = with_features(model, input_shape, classifier, features_module) if features else model
    names = ["logits", "features"] if features else ["logits"]
    try:
        with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (torch.zeros(1, *input_shape),), str(path), input_names=["input"],
                              output_names=names, opset_version=OPSET, **export_kwargs(),
                              dynamic_axes={n: {0: "batch"} for n in ["input"] + names})
    except OcapError:
        raise
    except Exception as e:
        raise OcapError(f"ONNX export to {path} failed: {type(e).__name__}: {e}") from e


def onnx_parity(model: nn.Module, onnx_path: Path, x: torch.Tensor, classifier: Optional[str] = None,
                features_module: Optional[str] = None) -> float:
    """Max |torch - onnxruntime| over every output the ONNX file has, for inputs ``x``."""
    return parity_diffs(model, onnx_path, x, classifier, features_module)[0]


def parity_diffs(model: nn.Module, onnx_path: Path, x: torch.Tensor, classifier: Optional[str] = None,
                 features_module: Optional[str] = None) -> Tuple[float, float]:
    """(max absolute difference, max difference relative to max(1, the output's largest |value|)).

    The relative one is what a check should bound: float32 rounding grows with magnitude (logits
    near 40 differ by 1e-4 between two correct runtimes)."""
    from .runtime import open_session, run_batches

    sess = open_session(onnx_path, threads=1)
    names = [o.name for o in sess.get_outputs()]
    got = run_batches(sess, x.numpy().astype(np.float32), outputs=names)
    with eval_mode(model), torch.no_grad():
        if "features" in names:
            ref = with_features(model, tuple(x.shape[1:]), classifier, features_module)(x)
        else:
            ref = (model(x),)
    absolute, scaled = 0.0, 0.0
    for n, r in zip(names, ref):
        d = float(np.max(np.abs(got[n] - r.numpy())))
        absolute = max(absolute, d)
        scaled = max(scaled, d / max(1.0, float(np.max(np.abs(r.numpy())))))
    return absolute, scaled
