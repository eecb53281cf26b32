"""Operating-point search (ALGORITHMS.md §11): the smallest pruned model whose agreement with the base
model restricted to the observed classes, on held-back images, stays within a loss budget.

A *level* is a MAC-reduction target. ``LevelMasks`` turns one into keep masks: channels ranked by
class-aware usage (or by a class-agnostic score), per-group floors, widths rounded for latency, and a
knob bisected until the pruned model meets the MAC budget. ``search`` walks a ladder of levels by
progressive pruning: each level prunes the last accepted (already fine-tuned) candidate further, since
the masks of a higher level are nested in those of a lower one, distils it, and measures held-back
agreement; the first level over budget gets one longer retry, then one try at the geometric midpoint
of the MAC reductions reached, and the search stops. Every level tried is recorded (MACs, agreement,
seconds) for the card.
"""

import copy
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .agreement import agreement_costs, judged_images_needed, smallest_budget, standard_error
from .blocks import remove_blocks, residual_blocks
from .cascade import macs_per_frame
from .errors import OcapError
from .finetune import FinetuneSpec, finetune
from .measure import count_macs
from .rules import group_scores, top_up
from .search_spec import SearchSpec
from .structural import PrunableModel
from .work_clock import WorkClock

log = logging.getLogger(__name__)
Progress = Callable[[Dict[str, Any]], None]
Masks = Dict[str, np.ndarray]


class LevelMasks:
    """Keep masks for a MAC-reduction level, in the base model's channel indices.

    Channels leave in one global order, the least used first: class-aware scores rank a channel by its
    usage relative to its group's mean usage, so each layer keeps what the observed classes use;
    class-agnostic scores (and ties) fall back to a channel's rank within its group, which thins every
    group evenly. The number of channels removed is bisected until the MACs meet the level. Floors
    (``floors[root]`` channels) and rounding always hold; protected groups stay whole. Masks of a higher
    level are subsets of those of a lower one (one order, a longer prefix removed). Rounding: a width
    above ``round_to`` is rounded up to a multiple of it, a narrower one (down to its floor) is left as
    it is, so that rounding speeds wide layers up without capping how far narrow ones can go.
    """

    def __init__(self, base: nn.Module, classifier: str, shape: Sequence[int], groups: Sequence,
                 scores: Mapping[str, np.ndarray], protected: Sequence[str], floors: Mapping[str, int],
                 round_to: int, classes: Sequence[int], agnostic: bool) -> None:
        self.base, self.classifier, self.shape, self.classes = base, classifier, tuple(shape), list(classes)
        self.groups = list(groups)
        self.gscore = group_scores(self.groups, scores)
        self.protected = set(protected) | {g.root for g in self.groups if g.grouped}
        self.round_to = round_to
        self.base_macs = count_macs(base, self.shape)
        self._blocks: Optional[List[str]] = None
        self._macs_cache: Dict[Tuple[int, ...], int] = {}
        gid, primary, secondary = [], [], []
        for i, g in enumerate(self.groups):
            if g.root in self.protected:
                continue
            s = self.gscore[g.root]
            ranked = np.sort(s)[::-1]                                  # best first
            rel = ranked / max(float(ranked.mean()), 1e-12)            # not the max: one outlier channel
            #                                                            made a whole layer look unused
            floor = min(max(int(floors.get(g.root, 1)), 1), g.width)
            pos = np.arange(floor, g.width)                            # the floor's channels never leave
            gid.append(np.full(len(pos), i))
            primary.append(np.zeros(len(pos)) if agnostic else rel[pos])
            secondary.append(1.0 - pos / g.width)
        if gid:
            gid_a, p, q = np.concatenate(gid), np.concatenate(primary), np.concatenate(secondary)
            self._order = gid_a[np.lexsort((q, p))]                    # group of each removal, in order
        else:
            self._order = np.zeros(0, np.int64)

    @property
    def removable(self) -> int:
        return len(self._order)

    def counts(self, removed: int) -> Dict[str, int]:
        """Kept channels per group after the first ``removed`` channels of the order have left."""
        gone = np.bincount(self._order[:max(0, int(removed))], minlength=len(self.groups))
        out = {}
        for i, g in enumerate(self.groups):
            n = g.width - int(gone[i])
            if self.round_to > 1 and g.root not in self.protected and n > self.round_to:
                n = int(math.ceil(n / self.round_to) * self.round_to)
            out[g.root] = min(n, g.width)
        return out

    def masks(self, counts: Mapping[str, int]) -> Masks:
        return {g.root: top_up(np.zeros(g.width, bool), self.gscore[g.root], counts[g.root]) for g in self.groups}

    def macs(self, counts: Mapping[str, int]) -> int:
        key = tuple(counts[g.root] for g in self.groups)
        if key not in self._macs_cache:
            model = prune_copy(self.base, self.classifier, self.shape, self.masks(counts), self.classes)[0]
            self._macs_cache[key] = count_macs(model, self.shape)
        return self._macs_cache[key]

    def reduction(self, removed: int) -> float:
        return self.base_macs / self.macs(self.counts(removed))

    def ceiling(self) -> float:
        """The largest MAC reduction the floors and protections allow."""
        return self.reduction(self.removable)

    def at(self, level: float, exact: bool = False) -> Optional[Masks]:
        """Masks that reach at least ``level``x fewer MACs while keeping as much as they can; None when
        the floors forbid it. ``exact`` gives back single channels after whole rounding steps, landing
        closer to the level at the cost of widths that are not multiples of ``round_to``."""
        if self.ceiling() < level:
            return None
        lo, hi = 0, self.removable                   # reduction(lo) < level <= reduction(hi), unless lo meets it
        if self.reduction(lo) >= level:
            return self.masks(self.counts(lo))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.reduction(mid) >= level:
                hi = mid
            else:
                lo = mid
        counts = self._give_back(self.counts(hi), self.counts(lo), level, max(self.round_to, 1))
        if exact and self.round_to > 1:
            counts = self._give_back(counts, self.counts(lo), level, 1)
        return self.masks(counts)

    def blocks_at_floor(self, masks: Masks) -> List[str]:
        """Residual blocks (``residual_blocks`` of the base) whose own channel groups are all at their
        floor in ``masks``: what is left of them is worth trying without them."""
        if self._blocks is None:
            self._blocks = residual_blocks(self.base, self.shape)
        least = self.counts(self.removable)           # the floors, rounded as every level is
        out = []
        for b in self._blocks:
            inner = [g for g in self.groups if g.root.startswith(b + ".") and not g.stream]
            if inner and all(g.root not in self.protected and int(masks[g.root].sum()) <= least[g.root]
                             for g in inner):
                out.append(b)
        return out

    def _give_back(self, counts: Dict[str, int], upper: Mapping[str, int], level: float, step: int
                   ) -> Dict[str, int]:
        """Rounding makes the last removal overshoot (8 channels of a full-resolution layer are a tenth
        of a small CNN's MACs): give channels back, most recently removed group first, while the level
        still holds, so that fixed-budget comparisons land close to their target."""
        counts = dict(counts)
        recent = list(dict.fromkeys(int(i) for i in self._order[::-1]))
        for i in recent:
            root = self.groups[i].root
            while counts[root] < upper[root]:
                trial = dict(counts, **{root: min(counts[root] + step, upper[root])})
                if self.base_macs / self.macs(trial) < level:
                    break
                counts = trial
        return counts


def prune_copy(base: nn.Module, classifier: str, shape: Sequence[int], masks: Mapping[str, np.ndarray],
               classes: Optional[Sequence[int]]) -> Tuple[nn.Module, List[list]]:
    """A pruned copy of ``base`` (head sliced to ``classes`` unless None) and its pruning history."""
    model = copy.deepcopy(base).eval()
    pm = PrunableModel(model, shape, classifier)
    pm.prune(dict(masks))
    if classes is not None:
        pm.slice_head(classes)
    return model, pm.history()


def prune_further(model: nn.Module, classifier: str, shape: Sequence[int], current: Masks, new: Masks
                  ) -> Tuple[nn.Module, List[list]]:
    """Prune a copy of ``model`` (pruned from the base at masks ``current``) to masks ``new`` (a subset
    of ``current``, base indices per group root); returns it and the history of this step."""
    model = copy.deepcopy(model).eval()
    pm = PrunableModel(model, shape, classifier)
    drops = {}
    for root, cur in current.items():
        nxt = np.asarray(new[root], bool)
        if (nxt & ~cur).any():
            raise OcapError(f"masks of group {root!r} are not nested: a later level keeps a pruned channel")
        drops[root] = np.flatnonzero(~nxt[cur])       # positions among the channels still there
    pm.prune_positions(drops)
    return model, pm.history()


class NoOperatingPoint(OcapError):
    """No level kept the loss budget; ``path`` holds every level tried, as in a card."""

    def __init__(self, message: str, path: List[Dict[str, Any]]) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class SearchResult:
    model: nn.Module
    history: List[list]
    masks: Masks
    level: float
    agreement: float
    path: List[Dict[str, Any]] = field(default_factory=list)
    stopped: str = ""
    polish: Dict[str, Any] = field(default_factory=dict)
    removed_blocks: List[str] = field(default_factory=list)    # replaced by nn.Identity after the history
    cascade: Optional[Dict[str, Any]] = None   # the chosen point as a cascade (``CascadeJudge.point``), or None
    epochs: int = 0                            # fine-tuning epochs the search trained in all (its work)


def agreement(model: nn.Module, x: torch.Tensor, teacher_k: torch.Tensor) -> float:
    """Share of ``x`` on which the K-way student's argmax equals the teacher's over the same K classes."""
    from .train import predict_logits

    if len(x) == 0:
        raise OcapError("no held-back images to measure agreement on")
    return float((predict_logits(model, x).argmax(1) == teacher_k.argmax(1)).float().mean())


def soft_agreement(model: nn.Module, x: torch.Tensor, teacher_k: torch.Tensor) -> float:
    """Agreement expected under the teacher's softmax over the K classes (``expected_agreement``)."""
    return 1.0 - float(judge_costs(model, x, teacher_k)["soft"].mean())


def judge_costs(model: nn.Module, x: torch.Tensor, teacher_k: torch.Tensor) -> Dict[str, np.ndarray]:
    """Per held-back image and measure, what the student's answer costs in agreement: under the
    teacher's softmax (``soft``, ``agreement_costs``) and 1 per disagreement (``hard``), from one
    forward pass."""
    from .train import predict_logits

    if len(x) == 0:
        raise OcapError("no held-back images to measure agreement on")
    student = predict_logits(model, x).argmax(1).numpy()
    return {"hard": (student != teacher_k.argmax(1).numpy()).astype(np.float64),
            "soft": agreement_costs(torch.softmax(teacher_k.double(), 1).numpy(), student)}


MEASURES = ("soft", "hard")


# a point replaces the cheapest so far only when its measured cost is this much lower: paired timings of
# the same models differ by a few percent from run to run, and the same images should give the same point
COST_MARGIN = 0.05
MIN_STEP = 1.2             # a midpoint closer than this to the accepted reduction is not worth a step...
MIN_HALVED_STEP = 1.1      # ...unless rounding put the first one on the masks that failed


def midpoint(accepted: float, failed: float, min_step: float = MIN_STEP) -> Optional[float]:
    """The MAC reduction worth one more step between the accepted candidate's and the failed one's (their
    geometric mean), or None when it is within ``min_step`` of the accepted one. Reached reductions, not
    ladder levels: width rounding makes a nominal 1.5 -> 2.0 step a real 1.54x -> 2.46x one."""
    mid = math.sqrt(accepted * failed)
    return mid if mid / accepted >= min_step else None


def check_judgeable(n: int, spec: SearchSpec) -> None:
    """Refuse a search whose judged half is too small for a verdict within ``spec.max_loss``
    (``judged_images_needed``: every level would fail after minutes of fine-tuning, or pass on a
    single image), saying how many images it needs."""
    need = judged_images_needed(spec.max_loss, spec.confidence_z) if spec.max_loss > 0 else None
    if need is not None and n >= need:
        return
    allowed = smallest_budget(n, spec.confidence_z)
    raise OcapError(f"{n} held-back images judge the search (half of those held back): a "
                    f"{spec.max_loss:g}-point budget needs {need if need else 'more than any number of'} "
                    f"({2 * need if need else 'as many'} held back), enough that no single image decides whether a "
                    f"level keeps it; collect more images of the observed classes or allow a loss budget of "
                    f"{math.ceil(allowed * 2) / 2:g} points (--max-loss, [personalize] max_loss)")


def search(base: nn.Module, classifier: str, shape: Sequence[int], classes: Sequence[int], levels_of: LevelMasks,
           x_tr: torch.Tensor, t_tr: torch.Tensor, x_val: torch.Tensor, t_val: torch.Tensor, spec: SearchSpec,
           ft: FinetuneSpec, teacher: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
           y: Optional[torch.Tensor] = None, y_val: Optional[torch.Tensor] = None,
           progress: Optional[Progress] = None, measure: Optional[Callable[[nn.Module], float]] = None,
           cascade: Optional[Callable[[torch.Tensor], Any]] = None) -> SearchResult:
    """Walk ``spec.levels`` (progressive pruning, distillation at each step) and return the smallest
    candidate whose held-back agreement with the restricted teacher (``t_tr`` / ``t_val``: base logits at
    the K classes) loses at most ``spec.max_loss`` points. Raises OcapError when no level is within.
    ``measure`` (model -> agreement in [0, 1]) replaces that agreement, e.g. to test the policy.

    The held-back images are split in two: early stopping picks each step's weights on one half, the
    levels are judged on the other, so the verdict comes from images that chose nothing.

    ``cascade`` (the judged half -> a ``CascadeJudge``) also judges each candidate with the base as its
    fallback: a level passes (the ladder goes on from it) when the candidate keeps the budget alone or
    as a cascade; the result is the cheapest point measured (alone, or a cascade with its threshold),
    at least ``COST_MARGIN`` cheaper than the base and than any point before it."""
    clock = WorkClock()                                      # budget in work (ocap_core/work_clock.py)
    x_stop, t_stop, x_judge, t_judge = x_val[0::2], t_val[0::2], x_val[1::2], t_val[1::2]
    yv_stop = None if y_val is None else y_val[0::2]
    if len(x_judge) == 0:
        x_judge, t_judge = x_stop, t_stop
    if spec.measure not in MEASURES:
        raise OcapError(f"unknown agreement measure {spec.measure!r}; choose from {', '.join(MEASURES)}")
    if measure is None:
        check_judgeable(len(x_judge), spec)
    casc = cascade(x_judge) if cascade is not None else None

    def judge(model: nn.Module) -> Tuple[float, float, float]:
        """Agreement on the judged half, its standard error (0 for a given ``measure``), and the
        argmax agreement (for the record)."""
        costs = judge_costs(model, x_judge, t_judge)
        hard = 1.0 - float(costs["hard"].mean())
        if measure is not None:
            return measure(model), 0.0, hard
        return 1.0 - float(costs[spec.measure].mean()), standard_error(costs[spec.measure]), hard

    full = {g.root: np.ones(g.width, bool) for g in levels_of.groups}
    start, start_hist = prune_copy(base, classifier, shape, full, classes)
    cur = (start, start_hist, full, 1.0, judge(start)[0])   # model, history, masks, level, agreement
    best: Optional[Tuple[nn.Module, List[list], Masks, float, float]] = None
    best_cost, best_cascade = float("inf"), None            # per frame, in units of the base's latency
    path: List[Dict[str, Any]] = []
    stopped = "ladder"
    last_failed: Optional[Tuple[nn.Module, List[list]]] = None
    removed: List[str] = []
    reached = 1.0                                            # the accepted candidate's MAC reduction

    used = 0                                                 # epochs trained, steps and polish

    def left() -> float:
        return spec.time_budget - clock.elapsed()

    def epochs_left() -> int:
        return spec.work_epochs - used

    def out_of() -> str:
        """Why the search can train no more ("" while it can): its work is spent, or (a safety cap
        that a busy machine can reach first) its time."""
        return "work_budget" if epochs_left() <= 0 else "time_budget" if left() <= 0 else ""

    def step(level: float, masks: Masks, cand: Optional[Tuple[nn.Module, List[list]]] = None, retry: bool = False,
             blocks: Sequence[str] = ()) -> bool:
        """Prune the accepted candidate to ``masks`` (or take ``cand``: with ``retry``, a candidate at
        these masks that missed the budget, trained ``spec.retry_factor`` times longer; with ``blocks``,
        the accepted one without those blocks) and judge it."""
        nonlocal cur, best, last_failed, reached, best_cost, best_cascade, used
        ts = time.perf_counter()
        model, hist = cand if cand is not None else prune_further(cur[0], classifier, shape, cur[2], masks)
        f = spec.retry_factor if retry else 1
        res = finetune(model, x_tr, t_tr, x_stop, t_stop,
                       replace(ft, epochs=max(1, min(spec.step_epochs * f, epochs_left())),
                               patience=spec.step_patience * f, time_budget=0.0, time_cap=max(1.0, left()),
                               recalibrate=not retry),
                       y=y, y_val=yv_stop, teacher=teacher)
        used += len(res.history) - 1
        agree, se, hard = judge(res.model)
        loss = 100.0 * (1.0 - agree)
        macs = count_macs(res.model, shape)
        ok = loss + spec.confidence_z * 100.0 * se <= spec.max_loss + 1e-9
        row = {"level": level, "macs": macs, "mac_reduction": round(levels_of.base_macs / macs, 3),
               "agreement": round(agree, 5), "loss_pp": round(loss, 3), "loss_se_pp": round(100.0 * se, 3),
               "accepted": ok,
               "hard_agreement": round(hard, 5), "retry": retry,
               "epochs": len(res.history) - 1, "stopped": res.stopped, "seconds": round(time.perf_counter() - ts, 2)}
        cost, as_cascade = 0.0, None
        if casc is not None:
            point = casc.point(res.model, macs)
            if point.get("tau") is not None:
                point["macs_per_frame"] = int(round(macs_per_frame(macs, levels_of.base_macs, point["fallback_share"])))
            row["cascade"] = point
            # within the budget alone, or else as a cascade: either way the ladder goes on from this level
            # (a cascade not yet cheaper than the best point is a step towards one that is: the README
            # demo stopped at 2.5x when 3x fell back on 16 % of its frames, while 4x and 7.3x, trained
            # on, cost less in other runs)
            if ok:
                cost = point["alone_cost"]
            elif point["accepted"]:
                ok, cost, as_cascade = True, point["cost"], point
            row["accepted"], row["accepted_as"] = ok, ("alone" if as_cascade is None else "cascade") if ok else None
        if blocks:
            row["removed_blocks"] = list(blocks)
        path.append(row)
        log.info("search level %.2fx: %.2fx fewer MACs, agreement %.4f (%.2f pp), %s", level,
                 row["mac_reduction"], agree, loss, "accepted" if ok else "over budget")
        if progress:
            progress(dict(row, event="search_level", max_loss=spec.max_loss))
        if ok:
            cur = (res.model, cur[1] + hist, masks, level, agree)
            reached = row["mac_reduction"]
            # measured, a point must be cheaper than the base too: a 1.5x network ran 1.03x as fast as it,
            # and the gate refused it after the search had stopped there (the README demo's first tries)
            cheaper = casc is None or cost < min(best_cost, 1.0) * (1.0 - COST_MARGIN)
            if casc is not None:
                row["cheaper"] = cheaper
            if cheaper:
                best, best_cost, best_cascade = cur, cost, as_cascade
                removed.extend(blocks)             # the blocks step prunes the best point: they go with it
        else:
            last_failed = (res.model, hist)
        return ok

    def same(a: Masks, b: Masks) -> bool:
        return all(np.array_equal(a[r], b[r]) for r in a)

    failed_masks: Optional[Masks] = None                    # of the level that stopped the ladder
    for level in spec.levels:
        why = out_of()
        if why:
            stopped = why
            break
        masks = levels_of.at(level)
        if masks is None:
            stopped = "floors"
            break
        masks = {r: m & cur[2][r] for r, m in masks.items()}
        if same(masks, cur[2]):              # rounding: this level prunes nothing more than the last
            continue
        if step(level, masks):
            continue
        # fine-tuning, not the masks, is what usually fails first: train the same candidate longer once
        # (only with its epochs left: a retry cut short by the budget trains less, not more)
        if (spec.retry_factor > 1 and epochs_left() >= spec.step_epochs * spec.retry_factor and not out_of()
                and last_failed is not None and step(level, masks, last_failed, retry=True)):
            continue
        failed_masks = masks
        break
    if failed_masks is not None:
        stopped = "over_budget"
        mid = midpoint(reached, path[-1]["mac_reduction"])
        while mid is not None and not out_of():
            masks = levels_of.at(mid)
            if masks is None:
                break
            masks = {r: m & cur[2][r] for r, m in masks.items()}
            if same(masks, cur[2]):             # rounding: nothing between the accepted masks and these
                break
            if not same(masks, failed_masks):
                step(round(mid, 3), masks)
                break
            # rounding lands the midpoint on the masks that failed (one 8-channel step of a large layer):
            # halve the step, while it is still worth one
            mid = midpoint(reached, mid, min_step=MIN_HALVED_STEP)
    if best is None:
        tried = ", ".join(f"{p['mac_reduction']:.2f}x: -{p['loss_pp']:.2f} pp" for p in path) or "none"
        within = ", ".join(f"{p['mac_reduction']:.2f}x" for p in path if p["accepted"])
        why = (f"the levels within it ({within}) ran no {100 * COST_MARGIN:.0f} % faster than the base here"
               if within else "none kept it")
        raise NoOperatingPoint(f"no operating point keeps held-back agreement within {spec.max_loss} points of the "
                               f"base restricted to classes {list(classes)} and is cheaper than the base: {why} "
                               f"(tried {tried})", path)
    blocks = levels_of.blocks_at_floor(best[2]) if spec.remove_blocks else []
    if blocks and not out_of():          # fewer operators: what channel pruning cannot take away
        cur = best                       # (the ladder may have gone past the cheapest point: prune that one)
        step(best[3], best[2], (remove_blocks(copy.deepcopy(best[0]), blocks), []), blocks=blocks)
    model, hist, masks, level, agree = best
    polish: Dict[str, Any] = {}
    if spec.polish and left() > 1 and epochs_left() > 0:
        res = finetune(model, x_tr, t_tr, x_stop, t_stop,
                       replace(ft, epochs=min(ft.epochs, epochs_left()), time_budget=0.0, time_cap=left()), y=y,
                       y_val=yv_stop, teacher=teacher)
        used += len(res.history) - 1
        after = judge(res.model)[0]
        polish = {"epochs": len(res.history) - 1, "stopped": res.stopped, "agreement": round(after, 5),
                  "seconds": round(res.seconds, 2)}
        if best_cascade is not None:
            # the threshold was chosen for the weights before polishing: choose it again, keep the cheaper
            point = casc.point(res.model, count_macs(res.model, shape))
            polish["cascade"] = point
            if point["accepted"] and point["cost"] <= best_cascade["cost"]:
                model, agree, best_cascade = res.model, after, point
        elif after >= agree:
            model, agree = res.model, after
    return SearchResult(model, hist, masks, level, agree, path, stopped, polish, removed, best_cascade, used)
