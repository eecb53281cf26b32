"""Options of one personalization run (a frozen dataclass, not thirty keyword arguments) and the
per-family defaults of ALGORITHMS.md §2 (slope α, keep share r, images per class, layers kept whole)."""

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

from .errors import OcapError
from .finetune_spec import FinetuneSpec
from .search_spec import MIN_PER_CLASS, SearchSpec


@dataclass(frozen=True)
class FamilyDefaults:
    slope: float
    keep_share: float
    images_per_class: int
    keep_first: int                       # conv layers nearest the input (forward order) kept whole
    keep_patterns: Tuple[str, ...] = ()   # fnmatch patterns of layer names kept whole
    round_to: int = 1                     # kept widths rounded up to a multiple of this (latency, not MACs)


FAMILY_DEFAULTS: Dict[str, FamilyDefaults] = {
    # round_to 8: onnxruntime's CPU kernels run odd widths slowly (MobileNetV2 {0,2,6}: 1.7x fewer MACs
    # ran 0.91x as fast at width multiples of 1, 1.47x at multiples of 8); ResNet-20's 16-wide stages
    # lose too many MACs to it under the fixed rules (2.36x -> 1.74x), so they keep 1. The search rounds
    # every family its own way (SEARCH_ROUND_TO, below).
    "vgg": FamilyDefaults(0.14, 0.05, 30, 3, round_to=8),
    "resnet": FamilyDefaults(0.40, 0.05, 20, 3),
    "mobilenetv2": FamilyDefaults(0.06, 0.01, 30, 0, (
        "features.[0-7]", "features.[0-7].*",      # stem and the first blocks
        "features.*.conv.2", "features.*.conv.3",  # projection conv + BN of expanding blocks
        "features.18", "features.18.*"), round_to=8),  # the final 1x1 conv
    "cnn": FamilyDefaults(0.14, 0.05, 30, 2, round_to=8),
}
GENERIC = FamilyDefaults(0.14, 0.05, 30, 2)
# The search (the default rule) protects by position and floors instead of whole layers: the conv nearest
# the input stays whole, the residual stream is prunable, every group keeps a floor (ALGORITHMS.md §11).
SEARCH_KEEP_FIRST = 1
SEARCH_MIN_SHARE = 0.05
SEARCH_MIN_WIDTH = 2
# The search rounds kept widths above 8 up to a multiple of 8 and leaves narrower ones free (LevelMasks):
# ResNet-20 with free widths ran slower than its base at 1.5x fewer MACs (0.69-0.75x) and no faster at
# 3x (0.97-1.0x); rounded above 8 it ran 1.11-1.13x and 1.50-1.54x faster at the same MAC reductions,
# and up to 16x (2.0-2.3x) where rounding every width to 8 capped it below 6x (onnxruntime CPU, batch 1,
# 1 thread, timed side by side; docs/benchmarks.md). The CNN's ceiling went from 8.4x to about 28x.
SEARCH_ROUND_TO = 8
HEAD_INPUT_PER_CLASS = 4      # the classifier's input keeps at least this many channels per kept class
RULE_NAMES = ("search", "personalize", "cap", "hybrid")


@dataclass(frozen=True)
class PruneSpec:
    """How to personalize: scorer and rule with their parameters, structural constraints, labels,
    fine-tuning. ``None`` fields take the architecture family's default (``resolve``)."""

    scorer: str = "ocap"
    rule: str = "search"                       # search (default) | personalize (OCAP) | cap (CAP) | hybrid
    search: SearchSpec = field(default_factory=SearchSpec)
    min_per_class: int = MIN_PER_CLASS         # fewer training images of an observed class: refuse
    tau: float = 0.0
    cap_threshold: int = 2
    cap_soft: bool = False
    cap_rounds: int = 3                        # cap rule: prune -> retrain rounds at most
    cap_tolerance: float = 0.02                # cap rule: a later round may lose this much validation agreement
    cap_round_epochs: int = 5                  # cap rule: distillation epochs between rounds (all C classes)
    theta: float = 0.0
    slope: Optional[float] = None
    keep_share: Optional[float] = None
    images_per_class: Optional[int] = None
    keep_first: Optional[int] = None
    keep_patterns: Optional[Tuple[str, ...]] = None
    prune_stream: Optional[bool] = None
    min_width: Optional[int] = None
    min_share: Optional[float] = None
    round_to: Optional[int] = None
    target_macs: float = 0.0                   # fixed budget: MAC reduction factor to reach (any scorer)
    match_widths: Optional[Dict[str, int]] = None   # l1 / random: kept width per group root
    labels: str = "none"                       # none | truth
    grouping: str = "pred"                     # pred (device) | truth (offline comparison)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.labels not in ("none", "truth"):
            raise OcapError(f"labels must be 'none' or 'truth', got {self.labels!r}")
        if self.grouping not in ("pred", "truth"):
            raise OcapError(f"grouping must be 'pred' or 'truth', got {self.grouping!r}")
        if self.keep_share is not None and not 0 < self.keep_share <= 1:
            raise OcapError(f"keep share must be in (0, 1], got {self.keep_share}")
        if self.rule not in RULE_NAMES:
            raise OcapError(f"unknown rule {self.rule!r}; choose from {', '.join(RULE_NAMES)}")
        if ((self.min_width is not None and self.min_width < 1) or (self.round_to is not None and self.round_to < 1)
                or (self.min_share is not None and not 0 <= self.min_share <= 1)):
            raise OcapError("min_width and round_to must be >= 1 and min_share in [0, 1]")
        if self.min_per_class < 1:
            raise OcapError(f"min_per_class must be >= 1, got {self.min_per_class}")
        if self.cap_rounds < 1 or not 0 <= self.cap_tolerance <= 1:
            raise OcapError(f"cap rounds must be >= 1 and the tolerance in [0, 1], got {self.cap_rounds}, "
                            f"{self.cap_tolerance}")
        if self.target_macs and self.target_macs < 1:
            raise OcapError(f"target MAC reduction must be >= 1 (e.g. 5 for 5x), got {self.target_macs}")

    def resolve(self, family: str) -> "PruneSpec":
        """Fill unset fields: the search's positional protections and floors, or the family's
        reference settings for the fixed rules."""
        d = FAMILY_DEFAULTS.get(family, GENERIC)
        searching = self.rule == "search" or bool(self.target_macs)
        if searching:
            d = replace(d, keep_first=SEARCH_KEEP_FIRST, keep_patterns=())
        return replace(self,
                       prune_stream=searching if self.prune_stream is None else self.prune_stream,
                       min_width=(SEARCH_MIN_WIDTH if searching else 1) if self.min_width is None else self.min_width,
                       min_share=(SEARCH_MIN_SHARE if searching else 0.0) if self.min_share is None else self.min_share,
                       slope=d.slope if self.slope is None else self.slope,
                       keep_share=d.keep_share if self.keep_share is None else self.keep_share,
                       images_per_class=d.images_per_class if self.images_per_class is None else self.images_per_class,
                       keep_first=d.keep_first if self.keep_first is None else self.keep_first,
                       keep_patterns=d.keep_patterns if self.keep_patterns is None else self.keep_patterns,
                       round_to=(SEARCH_ROUND_TO if searching else d.round_to) if self.round_to is None
                       else self.round_to)
