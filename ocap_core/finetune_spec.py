"""How a pruned model is fine-tuned (ALGORITHMS.md §6), torch-free: the daemon's job contract and
the search's specs import it without loading torch; ``finetune.py`` runs it."""

from dataclasses import dataclass

from .errors import OcapError

__all__ = ["FinetuneSpec"]


@dataclass(frozen=True)
class FinetuneSpec:
    """SGD with momentum, step decay at 40% / 80% of the epochs (of the epochs that fit in the
    budget, when one is set), distillation temperature t, weight β of the label loss, patience in
    epochs, time budget in seconds of work (0: none; ``work_clock``), teacher-confidence filter,
    augmentation. ``time_cap`` only stops training (a safety cap: the schedule is the epochs', so the
    same data and seed train the same weights on an idle and a busy machine unless the cap is hit);
    ``time_budget`` also shortens the schedule to the epochs that fit in it."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 2.0
    beta: float = 0.5
    patience: int = 10
    time_budget: float = 0.0
    time_cap: float = 0.0
    min_confidence: float = 0.0
    recal_samples: int = 500
    recalibrate: bool = True    # re-estimate BN statistics first (off when training a candidate further)
    shift: int = 0              # augmentation (needs the teacher model): random shifts up to this many pixels
    hflip: bool = False         # ... and random horizontal flips; the teacher labels each augmented batch
    mixup: float = 0.0          # mixup distillation: blend image pairs (Beta(a, a) weights), teacher labels the blend
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0 or self.time_budget < 0
                or self.time_cap < 0):
            raise OcapError(f"bad fine-tuning spec {self}")
        if self.optimizer not in ("sgd", "adam"):
            raise OcapError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0 <= self.beta <= 1:
            raise OcapError(f"beta must be in [0, 1], got {self.beta}")
        if self.mixup < 0:
            raise OcapError(f"mixup must be >= 0 (0: off), got {self.mixup}")
