"""The personalization pipeline, used by ``ocap prune`` and by the daemon's worker:
base package + samples + observed classes + PruneSpec -> candidate package.

Stages (each timed): load the base, run it as teacher on the samples, score channels, select masks,
prune structurally and slice the head to the observed classes, recalibrate BN and fine-tune by
distillation, export (ONNX parity-checked) into a package whose card records how it was made.
"""

import copy
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .build import PRUNING_FILE, load_model, save_package
from .errors import OcapError
from .evaluate import check_classes
from .finetune import finetune
from .importance import ImportanceTable
from .measure import count_macs, count_params
from .package import ModelPackage
from .personalize_samples import Samples
from .preprocess import preprocess
from .prune_spec import PruneSpec
from .rules import apply_rule, group_masks, layer_scores, matched_masks, share_masks
from .scorers import ScoreSpec, activation_layers, score
from .structural import PrunableModel
from .train import predict_logits
from .zoo import get_config

log = logging.getLogger(__name__)
Progress = Callable[[Dict[str, Any]], None]
MIN_TRAIN_PER_CLASS = 2


@dataclass
class PruneResult:
    package: ModelPackage
    table: ImportanceTable
    keep: Dict[str, np.ndarray]
    timings: Dict[str, float]


def _classifier_name(model: nn.Module, arch: str, shape) -> str:
    cfg = get_config(arch)
    if cfg.classifier:
        return cfg.classifier
    from .export import find_classifier

    return find_classifier(model, shape)


def protected_groups(pm: PrunableModel, bn_order: Sequence[str], spec: PruneSpec) -> List[str]:
    """Group roots kept whole: the first ``keep_first`` BN layers' groups, groups with a member
    matching ``keep_patterns``, and the residual stream unless ``prune_stream``."""
    first = set(bn_order[:spec.keep_first or 0])
    out = []
    for g in pm.groups:
        names = list(g.members)
        if (first & set(names) or any(fnmatch(n, p) for n in names for p in spec.keep_patterns or ())
                or (g.stream and not spec.prune_stream) or g.grouped):
            out.append(g.root)
    return out


def _masks_for_macs(base: nn.Module, classifier: str, shape, classes, groups, scores, protected, spec: PruneSpec,
                    base_macs: int) -> Dict[str, np.ndarray]:
    """Bisect a uniform keep share so that pruning reaches ``spec.target_macs`` (class-agnostic baselines)."""
    lo, hi, best = 0.0, 1.0, None
    for _ in range(12):
        share = (lo + hi) / 2
        masks = share_masks(groups, scores, share, protected, spec.min_width, spec.round_to)
        model = _pruned(base, classifier, shape, masks, classes)
        ratio = base_macs / count_macs(model, shape)
        if ratio >= spec.target_macs:
            best, lo = masks, share
        else:
            hi = share
    if best is None:
        raise OcapError(f"a {spec.target_macs}x MAC reduction is out of reach with these constraints")
    return best


def _pruned(base: nn.Module, classifier: str, shape, masks: Mapping[str, np.ndarray], classes) -> nn.Module:
    model = copy.deepcopy(base).eval()
    pm = PrunableModel(model, shape, classifier)
    pm.prune(dict(masks))
    pm.slice_head(classes)
    model.pruning_history = pm.history()  # type: ignore[attr-defined]  # read and removed by the caller
    return model


def personalize(base_pkg: ModelPackage, samples: Samples, classes: Sequence[int], spec: PruneSpec, out: Path,
                class_freqs: Optional[Mapping[int, float]] = None, name: Optional[str] = None,
                progress: Optional[Progress] = None) -> PruneResult:
    """Prune ``base_pkg`` for the observed ``classes`` and fine-tune it on ``samples``; write ``out``."""
    timings: Dict[str, float] = {}
    t = time.perf_counter()

    def stage(label: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[label] = round(now - t, 3)
        t = now
        if progress:
            progress({"event": "stage", "stage": label, "seconds": timings[label]})

    card = base_pkg.card
    num_classes = len(card.class_names)
    cls = check_classes(classes, num_classes, "observed classes")
    if len(cls) == num_classes:
        raise OcapError(f"all {num_classes} classes are observed: there is nothing to prune for")
    if card.class_ids != list(range(num_classes)):
        raise OcapError(f"{base_pkg.path} is already pruned (classes {card.class_ids}); always prune from a base model")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    base = load_model(base_pkg)
    arch = str(card.arch["name"])
    spec = spec.resolve(get_config(arch).family)
    shape = tuple(card.input.shape)
    classifier = _classifier_name(base, arch, shape)
    stage("load")

    x_all = torch.from_numpy(preprocess(samples.x, card.input))
    teacher = predict_logits(base, x_all) if len(x_all) else torch.zeros(0, num_classes)
    pred = teacher.argmax(1).numpy()
    if spec.grouping == "truth" or spec.labels == "truth":
        if samples.labels is None:
            raise OcapError("ground-truth grouping or labels need samples with labels")
    groups = samples.labels if spec.grouping == "truth" else pred
    is_val = np.asarray(samples.is_val, bool)
    train_idx = np.flatnonzero(~is_val & np.isin(groups, cls))
    val_idx = np.flatnonzero(is_val & np.isin(groups, cls))
    counts = {k: int((groups[train_idx] == k).sum()) for k in cls}
    few = [k for k, n in counts.items() if n < MIN_TRAIN_PER_CLASS]
    if few:
        raise OcapError(f"too few images for class {few[0]} ({card.class_names[few[0]]}): {counts[few[0]]} "
                        f"training samples, at least {MIN_TRAIN_PER_CLASS} needed")
    stage("teacher")

    score_spec = ScoreSpec(slope=spec.slope, keep_share=spec.keep_share, images_per_class=spec.images_per_class,
                           seed=spec.seed)
    table = score(spec.scorer, base, x_all[train_idx], groups[train_idx], num_classes, score_spec)
    stage("score")

    pm_base = PrunableModel(copy.deepcopy(base), shape, classifier)
    bn_order = [n for n, m in activation_layers(base, shape).items() if isinstance(m, nn.BatchNorm2d)]
    protected = protected_groups(pm_base, bn_order, spec)
    scores = layer_scores(table, cls)
    base_macs = count_macs(base, shape)
    if table.class_agnostic:
        if spec.match_widths:
            keep = matched_masks(pm_base.groups, scores, spec.match_widths)
        elif spec.target_macs:
            keep = _masks_for_macs(base, classifier, shape, cls, pm_base.groups, scores, protected, spec, base_macs)
        else:
            raise OcapError(f"the {spec.scorer} scorer needs a MAC target (--target-macs) or matched widths")
    else:
        rule = "frequency" if spec.scorer == "ocap-freq" and spec.rule == "personalize" else spec.rule
        layer_keep = apply_rule(rule, table, cls, tau=spec.tau, keep_share=spec.keep_share,
                                threshold=spec.cap_threshold, soft=spec.cap_soft, freqs=class_freqs, theta=spec.theta)
        keep = group_masks(pm_base.groups, layer_keep, scores, protected, spec.min_width, spec.min_share, spec.round_to)
    stage("select")

    student = _pruned(base, classifier, shape, keep, cls)
    history = student.__dict__.pop("pruning_history")
    stage("prune")

    k_index = {k: i for i, k in enumerate(cls)}
    y = None
    if spec.labels == "truth":
        y = torch.tensor([k_index.get(int(v), -1) for v in samples.labels], dtype=torch.long)
    res = finetune(student, x_all[train_idx], teacher[train_idx][:, cls], x_all[val_idx], teacher[val_idx][:, cls],
                   spec.finetune, y=None if y is None else y[train_idx], y_val=None if y is None else y[val_idx],
                   progress=progress, teacher=lambda xb: base(xb)[:, cls])
    stage("finetune")

    macs, params = count_macs(res.model, shape), count_params(res.model)
    widths = {g.root: [int(keep[g.root].sum()), g.width] for g in pm_base.groups}
    provenance = {
        "base": card.name, "base_version": card.version, "base_sha256": card.files.get("model.onnx"),
        "scorer": spec.scorer, "rule": spec.rule, "classes": cls,
        "spec": _jsonable(asdict(spec)), "class_freqs": {str(k): float(v) for k, v in (class_freqs or {}).items()},
        "samples": {"train": int(len(train_idx)), "val": int(len(val_idx)), "train_per_class": counts},
        "widths": widths, "protected_groups": protected,
        "finetune": {"best_epoch": res.best_epoch, "best_val": res.best_val, "stopped": res.stopped,
                     "history": res.history},
    }
    metrics = {"base_macs": base_macs, "base_params": count_params(base), "mac_reduction": base_macs / macs,
               "param_reduction": count_params(base) / params, "val_agreement": res.best_val}
    with tempfile.TemporaryDirectory() as tmp:
        hist_file = Path(tmp) / PRUNING_FILE
        hist_file.write_text(json.dumps({"base_arch": card.arch, "num_classes": num_classes, "history": history}))
        parity = x_all[np.concatenate([train_idx, val_idx])[:64]]
        pkg = save_package(res.model, Path(out), name=name or Path(out).name, input_spec=card.input,
                           class_names=card.class_names, arch=dict(card.arch), class_ids=cls, parent=card.version,
                           metrics=metrics, provenance=provenance, extra_files={PRUNING_FILE: hist_file},
                           parity_inputs=parity if len(parity) else None)
    stage("export")
    pkg.card.provenance["timings"] = timings
    from .build import update_metrics

    pkg = update_metrics(pkg, {"timings": timings})
    return PruneResult(pkg, table, keep, timings)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
