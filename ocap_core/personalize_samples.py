"""The samples a personalization run learns from (numpy only)."""

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Samples:
    """Cached images (N x H x W x C uint8), which are held back for validation, and optionally their
    true labels (offline comparison, or labels a user supplied)."""

    x: np.ndarray
    is_val: np.ndarray
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.x)
