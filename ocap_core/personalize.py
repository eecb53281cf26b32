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
from dataclasses import asdict, dataclass, replace
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


def _pruned(base: nn.Module, classifier: str, shape, masks: Mapping[str, np.ndarray],
            classes: Optional[Sequence[int]]) -> nn.Module:
    """A pruned copy of ``base`` (head sliced to ``classes`` unless None); its history in an attribute."""
    model = copy.deepcopy(base).eval()
    pm = PrunableModel(model, shape, classifier)
    pm.prune(dict(masks))
    if classes is not None:
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
    x_tr, g_tr = x_all[train_idx], groups[train_idx]
    table = score(spec.scorer, base, x_tr, g_tr, num_classes, score_spec)
    stage("score")

    base_macs = count_macs(base, shape)
    pm_base = PrunableModel(copy.deepcopy(base), shape, classifier)
    keep = _masks(base, pm_base, table, cls, spec, classifier, shape, base_macs, class_freqs)
    stage("select")

    student = _pruned(base, classifier, shape, keep, cls if spec.rule != "cap" else None)
    history = student.__dict__.pop("pruning_history")
    rounds: List[Dict[str, Any]] = []
    if spec.rule == "cap" and not table.class_agnostic:
        student, history, rounds = _cap_rounds(student, history, x_tr, g_tr, teacher[train_idx],
                                               x_all[val_idx], teacher[val_idx], cls, spec, score_spec, classifier,
                                               shape, progress)
        pm = PrunableModel(student, shape, classifier)
        pm.slice_head(cls)
        history = history + pm.history()
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
    widths = {g.root: [int(res.model.get_submodule(g.root).out_channels), g.width] for g in pm_base.groups}
    provenance = {
        "base": card.name, "base_path": str(Path(base_pkg.path).resolve()), "base_version": card.version,
        "base_sha256": card.files.get("model.onnx"),
        "scorer": spec.scorer, "rule": spec.rule, "classes": cls,
        "spec": _jsonable(asdict(spec)), "class_freqs": {str(k): float(v) for k, v in (class_freqs or {}).items()},
        "samples": {"train": int(len(train_idx)), "val": int(len(val_idx)), "train_per_class": counts},
        "widths": widths, "cap_rounds": rounds,
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


def _masks(model: nn.Module, pm: PrunableModel, table: ImportanceTable, cls: List[int], spec: PruneSpec,
           classifier: str, shape, base_macs: int, class_freqs: Optional[Mapping[int, float]]
           ) -> Dict[str, np.ndarray]:
    """Importance table -> one keep mask per channel group of ``pm`` (rule, constraints, baselines)."""
    bn_order = [n for n, m in activation_layers(model, shape).items() if isinstance(m, nn.BatchNorm2d)]
    protected = protected_groups(pm, bn_order, spec)
    scores = layer_scores(table, cls)
    if table.class_agnostic:
        if spec.match_widths:
            return matched_masks(pm.groups, scores, spec.match_widths)
        if spec.target_macs:
            return _masks_for_macs(model, classifier, shape, cls, pm.groups, scores, protected, spec, base_macs)
        raise OcapError(f"the {spec.scorer} scorer needs a MAC target (--target-macs) or matched widths")
    rule = "frequency" if spec.scorer == "ocap-freq" and spec.rule == "personalize" else spec.rule
    layer_keep = apply_rule(rule, table, cls, tau=spec.tau, keep_share=spec.keep_share,
                            threshold=spec.cap_threshold, soft=spec.cap_soft, freqs=class_freqs, theta=spec.theta)
    return group_masks(pm.groups, layer_keep, scores, protected, spec.min_width, spec.min_share, spec.round_to)


def _agreement_on(model: nn.Module, x: torch.Tensor, teacher: torch.Tensor, cls: List[int]) -> float:
    """Argmax agreement with the teacher, both restricted to the observed classes."""
    if len(x) == 0:
        return 1.0
    return float((predict_logits(model, x)[:, cls].argmax(1) == teacher[:, cls].argmax(1)).float().mean())


def _cap_rounds(model: nn.Module, history: List[list], x_tr: torch.Tensor, g_tr: np.ndarray,
                t_tr: torch.Tensor, x_val: torch.Tensor, t_val: torch.Tensor, cls: List[int], spec: PruneSpec,
                score_spec: ScoreSpec, classifier: str, shape, progress: Optional[Progress]):
    """CAP's loop (ALGORITHMS.md §3) after the first removal: retrain by distillation over all C
    classes; stop when validation agreement on S falls more than ``cap_tolerance`` below the first
    round's (keeping the previous model), else score the retrained model afresh and remove what now
    serves fewer than T classes, until nothing is removable or the round budget is spent.

    The floor is relative because the validation buffer is KL-selected (outliers): its absolute
    agreement says more about the subset's difficulty than about the pruning. Returns the accepted
    model (full head), its history and a log per round."""
    round_ft = replace(spec.finetune, epochs=spec.cap_round_epochs, patience=spec.cap_round_epochs, shift=0,
                       hflip=False, mixup=0.0)          # between rounds: plain distillation over all C
    num_classes = t_tr.shape[1]
    accepted, accepted_history, rounds, floor = model, history, [], 0.0
    for r in range(1, spec.cap_rounds + 1):
        res = finetune(model, x_tr, t_tr, x_val, t_val, round_ft, teacher=None)
        agree = _agreement_on(res.model, x_val, t_val, cls)
        macs = count_macs(res.model, shape)
        rounds.append({"round": r, "macs": macs, "val_agreement": agree})
        if progress:
            progress({"event": "cap_round", "round": r, "macs": macs, "val_agreement": agree})
        if r == 1:
            floor = agree - spec.cap_tolerance
        elif agree < floor:
            log.info("cap round %d: validation agreement %.3f below the floor %.3f; keeping round %d",
                     r, agree, floor, r - 1)
            break
        accepted, accepted_history = res.model, history
        if r == spec.cap_rounds:
            break
        table = score(spec.scorer, accepted, x_tr, g_tr, num_classes, score_spec)
        pm = PrunableModel(copy.deepcopy(accepted), shape, classifier)
        keep = _masks(accepted, pm, table, cls, spec, classifier, shape, macs, None)
        if all(bool(m.all()) for m in keep.values()):
            break
        pm.prune(keep)
        model, history = pm.model, history + pm.history()
    return accepted, accepted_history, rounds


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
