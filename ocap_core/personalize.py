"""The personalization pipeline, used by ``ocap prune`` and by the daemon's worker:
base package + samples + observed classes + PruneSpec -> candidate package.

Stages (each timed): load the base, run it as teacher on the samples, score channels, select masks,
prune structurally and slice the head to the observed classes, recalibrate BN and fine-tune by
distillation, export (ONNX parity-checked) into a package whose card records how it was made.
"""

import copy
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

from .build import PRUNING_FILE, load_model, save_package, write_pruning
from .cascade import FALLBACK_ONNX, cascade_entry, cascade_metrics, outside_weight
from .cascade_judge import CascadeJudge
from .errors import OcapError
from .evaluate import check_classes
from .finetune import finetune
from .hooks import probe
from .importance import ImportanceTable
from .measure import count_macs, count_params
from .package import ModelPackage
from .personalize_samples import Samples
from .preprocess import preprocess
from .prune_spec import PruneSpec
from .rules import apply_rule, group_masks, layer_scores, matched_masks, min_keep, usage_scores
from .scorers import ScoreSpec, score
from .search import LevelMasks, SearchResult, agreement, prune_copy, search, soft_agreement
from .structural import PrunableModel
from .train import predict_logits
from .zoo import get_config

log = logging.getLogger(__name__)
Progress = Callable[[Dict[str, Any]], None]


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


def conv_order(model: nn.Module, shape: Sequence[int]) -> List[str]:
    """Conv2d layers in the order the forward pass runs them (nearest the input first)."""
    names = {m: n for n, m in model.named_modules()}
    order: List[str] = []
    probe(model, shape, [(m, lambda mod, i, o: order.append(names[mod])) for m in model.modules()
                         if isinstance(m, nn.Conv2d)])
    return list(dict.fromkeys(order))


def protected_groups(pm: PrunableModel, convs: Sequence[str], spec: PruneSpec) -> List[str]:
    """Group roots kept whole, by position in the graph (not by BatchNorm): the groups of the first
    ``keep_first`` convs nearest the input, groups with a member matching ``keep_patterns``, grouped
    convs, and the residual stream unless ``prune_stream``."""
    first = set(convs[:spec.keep_first or 0])
    out = []
    for g in pm.groups:
        names = list(g.members)
        if (first & set(names) or any(fnmatch(n, p) for n in names for p in spec.keep_patterns or ())
                or (g.stream and not spec.prune_stream) or g.grouped):
            out.append(g.root)
    return out


def floors(pm: PrunableModel, spec: PruneSpec, k: int) -> Dict[str, int]:
    """Channels each group keeps at least: ``min_width`` and ``min_share`` of its width, and for the
    groups the classifier reads, ``HEAD_INPUT_PER_CLASS`` per kept class."""
    from .prune_spec import HEAD_INPUT_PER_CLASS

    out = {}
    for g in pm.groups:
        n = min_keep(g.width, spec.min_width or 1, spec.min_share or 0.0, 1)
        if g.feeds_head:
            n = max(n, min(g.width, HEAD_INPUT_PER_CLASS * k))
        out[g.root] = n
    return out


def level_masks(base: nn.Module, pm: PrunableModel, table: ImportanceTable, cls: List[int], spec: PruneSpec,
                classifier: str, shape, class_freqs: Optional[Mapping[int, float]]) -> LevelMasks:
    """MAC-level -> masks for this base, table and spec (class-aware usage ranking, or the class-agnostic
    score with uniform shares)."""
    protected = protected_groups(pm, conv_order(base, shape), spec)
    scores = layer_scores(table, cls) if table.class_agnostic else usage_scores(table, cls, class_freqs)
    return LevelMasks(base, classifier, shape, pm.groups, scores, protected, floors(pm, spec, len(cls)),
                      spec.round_to or 1, cls, table.class_agnostic)


def check_enough(counts: Mapping[int, int], minimum: int, class_names: Sequence[str]) -> None:
    """Refuse to personalize when an observed class has fewer than ``minimum`` training images,
    naming every class that is short (a model fine-tuned on a handful of images is not worth deploying)."""
    short = [k for k, n in sorted(counts.items()) if n < minimum]
    if short:
        names = ", ".join(f"{k} ({class_names[k]}): {counts[k]}" for k in short)
        raise OcapError(f"too few training images of observed classes {names}; at least {minimum} per class "
                        f"needed (min_per_class)")


def check_request(base_pkg: ModelPackage, classes: Sequence[int], spec: PruneSpec) -> List[int]:
    """The observed classes, sorted, when ``personalize`` can make something of this request; else the
    OcapError it would raise later (a class set with nothing to prune, a pruned base, an unknown scorer),
    so that a caller can refuse before streaming its data through the base model."""
    from .scorers import SCORERS

    card = base_pkg.card
    num_classes = len(card.class_names)
    cls = check_classes(classes, num_classes, "observed classes")
    if len(cls) == num_classes:
        raise OcapError(f"all {num_classes} classes are observed: there is nothing to prune for")
    if card.class_ids != list(range(num_classes)):
        raise OcapError(f"{base_pkg.path} is already pruned (classes {card.class_ids}); always prune from a base model")
    if spec.scorer not in SCORERS:
        raise OcapError(f"unknown scorer {spec.scorer!r}; choose from {', '.join(SCORERS)}")
    return cls


def personalize(base_pkg: ModelPackage, samples: Samples, classes: Sequence[int], spec: PruneSpec, out: Path,
                class_freqs: Optional[Mapping[int, float]] = None, name: Optional[str] = None,
                progress: Optional[Progress] = None) -> PruneResult:
    """Prune ``base_pkg`` for the observed ``classes`` and fine-tune it on ``samples``; write ``out``.
    Samples the base answers with another class are trained and judged on too, all of them: the caller
    decides how many to pass (``selection.with_outside``, as the offline stream and the daemon do)."""
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
    cls = check_request(base_pkg, classes, spec)
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
    mine = np.isin(groups, cls)
    # images grouped under an unobserved class (the base's answer) are trained and judged on too: the
    # pruned model must give them one of the observed classes, as the base told the classes does; the
    # channels are scored on the observed classes' images only
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    counts = {k: int((groups[train_idx] == k).sum()) for k in cls}
    check_enough(counts, spec.min_per_class, card.class_names)
    if not (mine & is_val).any():
        raise OcapError("no held-back images of the observed classes: the candidate could not be checked")
    stage("teacher")

    score_spec = ScoreSpec(slope=spec.slope, keep_share=spec.keep_share, images_per_class=spec.images_per_class,
                           seed=spec.seed)
    x_tr, g_tr = x_all[train_idx], groups[train_idx]
    scored = mine[train_idx]
    table = score(spec.scorer, base, x_tr[scored], g_tr[scored], num_classes, score_spec)
    stage("score")

    base_macs = count_macs(base, shape)
    pm_base = PrunableModel(copy.deepcopy(base), shape, classifier)
    k_index = {k: i for i, k in enumerate(cls)}
    y = None
    if spec.labels == "truth":
        y = torch.tensor([k_index.get(int(v), -1) for v in samples.labels], dtype=torch.long)
    y_tr, y_val = (None, None) if y is None else (y[train_idx], y[val_idx])
    t_tr, t_val = teacher[train_idx][:, cls], teacher[val_idx][:, cls]
    x_val = x_all[val_idx]

    def teacher_k(xb: torch.Tensor) -> torch.Tensor:
        return base(xb)[:, cls]

    searched: Optional[SearchResult] = None
    rounds: List[Dict[str, Any]] = []
    if spec.rule == "search" and not spec.match_widths and not spec.target_macs:
        levels = level_masks(base, pm_base, table, cls, spec, classifier, shape, class_freqs)
        stage("select")
        judge = None
        if spec.search.cascade and base_pkg.has_onnx:
            # the base answers for the specialist weighted by the class mix: the share of the held-back
            # frames (a random reservoir of the stream) it sends to other classes
            weight = outside_weight(float((~mine[val_idx]).mean()) if len(val_idx) else 0.0, len(cls), num_classes)

            def judge(x_judge: torch.Tensor) -> CascadeJudge:
                return CascadeJudge(x_judge, predict_logits(base, x_judge), cls, base_pkg.onnx_path, shape, classifier,
                                    spec.search.max_loss, spec.search.confidence_z, spec.search.measure, weight)
        searched = search(base, classifier, shape, cls, levels, x_tr, t_tr, x_val, t_val, spec.search,
                          spec.finetune, teacher=teacher_k, y=y_tr, y_val=y_val, progress=progress, cascade=judge)
        keep, history, student = searched.masks, searched.history, searched.model
        stage("search")
        tuned = {"path": searched.path, "stopped": searched.stopped, "level": searched.level,
                 "polish": searched.polish, "removed_blocks": searched.removed_blocks, "epochs": searched.epochs}
    else:
        if spec.target_macs:               # fixed budget, any scorer
            keep = level_masks(base, pm_base, table, cls, spec, classifier, shape, class_freqs).at(spec.target_macs, exact=True)
            if keep is None:
                raise OcapError(f"a {spec.target_macs}x MAC reduction is out of reach with these floors and "
                                f"protections")
        else:
            keep = _masks(base, pm_base, table, cls, spec, classifier, shape, class_freqs)
        stage("select")
        student, history = prune_copy(base, classifier, shape, keep, cls if spec.rule != "cap" else None)
        if spec.rule == "cap" and not table.class_agnostic:
            # CAP's own loop, as published: its rounds see the observed classes' images only
            student, history, rounds = _cap_rounds(student, history, x_tr[scored], g_tr[scored],
                                                   teacher[train_idx][scored], x_val,
                                                   teacher[val_idx], cls, spec, score_spec, classifier, shape,
                                                   progress)
            pm = PrunableModel(student, shape, classifier)
            pm.slice_head(cls)
            history = history + pm.history()
        stage("prune")
        res = finetune(student, x_tr, t_tr, x_val, t_val, spec.finetune, y=y_tr, y_val=y_val, progress=progress,
                       teacher=teacher_k)
        student = res.model
        stage("finetune")
        tuned = {"best_epoch": res.best_epoch, "best_val": res.best_val, "stopped": res.stopped,
                 "history": res.history}

    macs, params = count_macs(student, shape), count_params(student)
    widths = {g.root: [int(keep[g.root].sum()), g.width] for g in pm_base.groups}
    provenance = {
        "base": card.name, "base_path": str(Path(base_pkg.path).resolve()), "base_version": card.version,
        "base_sha256": card.files.get("model.onnx"),
        "scorer": spec.scorer, "rule": spec.rule, "classes": cls,
        "spec": _jsonable(asdict(spec)), "class_freqs": {str(k): float(v) for k, v in (class_freqs or {}).items()},
        "samples": {"train": int(len(train_idx)), "val": int(len(val_idx)), "train_per_class": counts,
                    "outside": {"train": int((~mine[train_idx]).sum()), "val": int((~mine[val_idx]).sum())}},
        "widths": widths, "cap_rounds": rounds,
        ("search" if searched else "finetune"): tuned,
    }
    metrics = {"base_macs": base_macs, "base_params": count_params(base), "mac_reduction": base_macs / macs,
               "param_reduction": count_params(base) / params, "val_agreement": agreement(student, x_val, t_val),
               "val_expected_agreement": soft_agreement(student, x_val, t_val), "val_images": int(len(val_idx))}
    chosen = searched.cascade if searched else None
    extra: Dict[str, Path] = {}
    if chosen is not None:
        metrics.update(cascade_metrics(chosen, base_macs, macs))
        extra[FALLBACK_ONNX] = base_pkg.onnx_path
    with tempfile.TemporaryDirectory() as tmp:
        extra[PRUNING_FILE] = write_pruning(Path(tmp) / PRUNING_FILE, card.arch, num_classes, history,
                                            searched.removed_blocks if searched else [])
        parity = x_all[np.concatenate([train_idx, val_idx])[:64]]
        pkg = save_package(student, Path(out), name=name or Path(out).name, input_spec=card.input,
                           class_names=card.class_names, arch=dict(card.arch), class_ids=cls, parent=card.version,
                           metrics=metrics, provenance=provenance, extra_files=extra,
                           parity_inputs=parity if len(parity) else None,
                           cascade=None if chosen is None else cascade_entry(card, chosen["tau"], weight))
    stage("export")
    pkg.card.provenance["timings"] = timings
    from .build import update_metrics

    pkg = update_metrics(pkg, {"timings": timings})
    return PruneResult(pkg, table, keep, timings)


def _masks(model: nn.Module, pm: PrunableModel, table: ImportanceTable, cls: List[int], spec: PruneSpec,
           classifier: str, shape, class_freqs: Optional[Mapping[int, float]]) -> Dict[str, np.ndarray]:
    """A reference rule's table -> one keep mask per channel group of ``pm`` (or a class-agnostic
    baseline at matched widths)."""
    protected = protected_groups(pm, conv_order(model, shape), spec)
    scores = layer_scores(table, cls)
    if table.class_agnostic:
        if spec.match_widths:
            return matched_masks(pm.groups, scores, spec.match_widths)
        raise OcapError(f"the {spec.scorer} scorer with rule {spec.rule!r} needs a MAC target (--target-macs) "
                        f"or matched widths")
    rule = "frequency" if spec.scorer == "ocap-freq" and spec.rule == "personalize" else spec.rule
    layer_keep = apply_rule(rule, table, cls, tau=spec.tau, keep_share=spec.keep_share,
                            threshold=spec.cap_threshold, soft=spec.cap_soft, freqs=class_freqs, theta=spec.theta)
    return group_masks(pm.groups, layer_keep, scores, protected, spec.min_width or 1, spec.min_share or 0.0,
                       spec.round_to or 1)


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
        keep = _masks(accepted, pm, table, cls, spec, classifier, shape, None)
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
