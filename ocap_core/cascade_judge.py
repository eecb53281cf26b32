"""What a search candidate is worth as a cascade (ALGORITHMS.md §12): its threshold chosen and its
end-to-end loss read on the search's judged half of the held-back frames, cross-fitted so that no frame
judges the threshold it chose (``cascade.cross_fitted``), and its cost measured on this machine as the
specialist's batch-1 latency plus the fallback share of the base's, in units of the base's."""

import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch
import torch.nn as nn

from .agreement import agreement_costs
from .cascade import cross_fitted, fallback_costs
from .export import export_onnx
from .runtime import open_session, paired_latency

log = logging.getLogger(__name__)
LATENCY_RUNS = 100


class CascadeJudge:
    """Judges candidates of one search as cascades with the base as fallback.

    ``t_judge_full``: the base's logits over all its classes on the search's judged half of the held-back
    frames (``x_judge``), on which the threshold is chosen and judged (``cascade.cross_fitted``; not the
    early-stopping half, which flatters the weights it picked); ``classes``: the observed classes (the
    reference is the base restricted to them); ``base_onnx``: the base's ONNX file, timed beside each
    candidate; ``weight``: the base's ``outside_weight`` where it answers (``fallback_answer``)."""

    def __init__(self, x_judge: torch.Tensor, t_judge_full: torch.Tensor, classes: Sequence[int], base_onnx: Path,
                 shape: Sequence[int], classifier: str, max_loss: float, z: float, measure: str = "soft",
                 weight: float = 1.0) -> None:
        self.classes, self.shape, self.classifier = list(classes), tuple(shape), classifier
        self.max_loss, self.z, self.measure = max_loss, z, measure
        self.x = x_judge
        # the restricted base's softmax over the K classes (the reference where the specialist answers)
        # and what the base's own answers cost where it answers (``fallback_costs``)
        self.ref = torch.softmax(t_judge_full[:, self.classes].double(), 1).numpy()
        full = torch.softmax(t_judge_full.double(), 1).numpy()
        self.base_cost = fallback_costs(full, self.classes, weight, hard=measure != "soft")
        self.base_session = open_session(Path(base_onnx))
        self.one = x_judge[:1].numpy() if len(x_judge) else np.zeros((1,) + self.shape, np.float32)
        self._latency: Dict[int, Dict[str, float]] = {}

    def _specialist(self, model: nn.Module):
        from .train import predict_logits

        p = torch.softmax(predict_logits(model, self.x).double(), 1).numpy()
        idx = p.argmax(1)
        soft = agreement_costs(self.ref, idx)
        hard = (idx != self.ref.argmax(1)).astype(np.float64)
        return p.max(1), soft if self.measure == "soft" else hard

    def latency(self, model: nn.Module, macs: int) -> Dict[str, float]:
        """Batch-1, one-thread latency of ``model`` and of the base, timed call by call in turn
        (``paired_latency``), in ms; once per MAC count (a retried level keeps its shape)."""
        if macs not in self._latency:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "candidate.onnx"
                export_onnx(model, self.shape, path, classifier=self.classifier, features=False)
                session = open_session(path)
                spec_ms, base_ms = paired_latency([session, self.base_session], self.one, runs=LATENCY_RUNS)
                del session
            self._latency[macs] = {"latency_ms": round(spec_ms, 4), "base_latency_ms": round(base_ms, 4)}
        return self._latency[macs]

    def point(self, model: nn.Module, macs: int) -> Dict[str, Any]:
        """The model alone and as a cascade: the cascade's threshold, fallback share and cross-fitted
        loss on the judged half, whether it keeps the budget (``accepted``), and the measured cost per
        frame of both, in units of the base's latency (``cost``: the cascade's, ``alone_cost``: the
        specialist's)."""
        conf, cost = self._specialist(model)
        chosen = cross_fitted(conf, cost, self.base_cost, self.max_loss, self.z)
        lat = self.latency(model, macs)
        ratio = lat["latency_ms"] / max(lat["base_latency_ms"], 1e-9)
        out: Dict[str, Any] = dict(lat, alone_cost=round(ratio, 4))
        if chosen is None:
            return dict(out, accepted=False, tau=None, cost=None)
        out.update(chosen.to_dict(), accepted=chosen.within(self.max_loss, self.z), cost=round(ratio + chosen.share, 4))
        return out
