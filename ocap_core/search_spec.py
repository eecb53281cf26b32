"""What the operating-point search may spend and lose (torch-free: the daemon's config shares its
defaults)."""

from dataclasses import dataclass
from typing import Tuple

from .errors import OcapError

DEFAULT_LEVELS: Tuple[float, ...] = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
DEFAULT_MAX_LOSS = 1.0
DEFAULT_TIME_BUDGET = 600.0   # a safety cap: the work budget (epochs) ends a search first on a 2-core x86
DEFAULT_WORK_EPOCHS = 160     # fine-tuning epochs of a whole search (steps, retries, polish)
MIN_PER_CLASS = 32          # fewer training images of an observed class: refuse to personalize


@dataclass(frozen=True)
class SearchSpec:
    """The loss budget in points of held-back agreement with the base restricted to the observed
    classes (``measure``: expected under the teacher's softmax, or argmax counts), the ladder of
    MAC-reduction levels, the search's work in epochs of fine-tuning (each step's ``step_epochs``, a
    retry's, the polish's ``FinetuneSpec.epochs``, at most ``work_epochs`` in all), a safety cap on it in
    seconds of work (``work_clock``), and the fine-tuning of each step. Work, not time, ends a search:
    the same images and seed give the same operating point on an idle and on a busy machine (with the
    same number of threads), unless the cap is hit first (the card says which: ``stopped``)."""

    max_loss: float = DEFAULT_MAX_LOSS
    levels: Tuple[float, ...] = DEFAULT_LEVELS
    time_budget: float = DEFAULT_TIME_BUDGET   # a cap: the search stops there, and says so ("time_budget")
    work_epochs: int = DEFAULT_WORK_EPOCHS     # the search's work: epochs of fine-tuning in all ("work_budget")
    step_epochs: int = 12
    step_patience: int = 4
    retry_factor: int = 3         # a level over budget is trained this many times longer once (1: no retry)
    polish: bool = True           # fine-tune the chosen candidate further with the time left
    measure: str = "soft"         # agreement judged by the teacher's softmax (soft) or by argmax (hard)
    confidence_z: float = 1.0     # a level passes when its loss plus this many standard errors is in budget
    remove_blocks: bool = True    # try the chosen candidate without its residual blocks left at their floor
    cascade: bool = True          # also judge each candidate with the base as its fallback (ocap_core/cascade.py)

    def __post_init__(self) -> None:
        if not 0 <= self.max_loss <= 100:
            raise OcapError(f"max loss must be in [0, 100] points, got {self.max_loss}")
        if not self.levels or any(b <= a for a, b in zip(self.levels, self.levels[1:])) or self.levels[0] <= 1:
            raise OcapError(f"search levels must be increasing MAC reductions above 1, got {list(self.levels)}")
        if (self.time_budget <= 0 or self.work_epochs < 1 or self.step_epochs < 1 or self.step_patience < 1 or self.retry_factor < 1
                or self.confidence_z < 0):
            raise OcapError(f"bad search spec {self}")
