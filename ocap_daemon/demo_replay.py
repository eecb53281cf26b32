"""The demo's camera: a client thread that sends labelled images to ``ocapd`` over its control socket in
a class mix at a steady rate and keeps what each request got, so the demo and the tests can score the
answers and count failed requests (the daemon never sees a label).

Each class's images come in a seeded shuffled order, every one once before any comes again (drawn with
replacement, the slowest class of the README's demo had shown 76 % of its images after 30 s and 94 %
after 60 s: the held-back frames kept arriving, the trigger went on whatever had come by its deadline,
and the same demo deployed 1.5x in one run and 4x in the next)."""

import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ocap_service.client import Client, ServiceError
from ocap_service.sources import ThreadSource

log = logging.getLogger(__name__)


class Replay(ThreadSource):
    """Sends frames of the current mix to the daemon at ``rate`` per second from its own thread; keeps
    (time sent, true class, predicted class, model version, ok, time answered or failed) per request."""

    name = "demo-replay"

    def __init__(self, sock: Path, images: Dict[int, np.ndarray], rate: float, seed: int = 0) -> None:
        self.sock, self.images, self.rate = sock, images, rate
        self.rng = np.random.default_rng(seed)
        self._order: Dict[int, List[int]] = {}         # per class, the indices still to send this round
        self.mix: Dict[int, float] = {}
        self.log: List[tuple] = []
        super().__init__()

    def set_mix(self, mix: Dict[int, float]) -> None:
        total = sum(mix.values())
        self.mix = {k: v / total for k, v in mix.items()}

    def _next(self, k: int) -> int:
        """The next image of class ``k``: a new seeded shuffle of its images once the last is spent."""
        order = self._order.get(k)
        if not order:
            order = self._order[k] = [int(i) for i in self.rng.permutation(len(self.images[k]))]
        return order.pop()

    def answered_since(self, t: float) -> int:
        """Requests sent at or after wall time ``t`` that got an answer."""
        return sum(1 for r in list(self.log) if r[0] >= t and r[4])

    def _run(self) -> None:
        period = 1.0 / self.rate
        nxt = time.monotonic()
        client: Optional[Client] = None
        while not self._stop.is_set():
            classes = list(self.mix)
            k = int(self.rng.choice(classes, p=[self.mix[c] for c in classes]))
            img = self.images[k][self._next(k)]
            t = time.time()
            try:
                client = client or Client(self.sock)
                r = client.predict(img)
                self.log.append((t, k, r["class_id"], r["model_version"], True, time.time()))
            except (ServiceError, OSError) as e:          # counted as failed; reconnect on the next frame
                self.log.append((t, k, -1, "", False, time.time()))
                log.warning("request failed: %s", e)
                if client is not None:
                    client.close()
                client = None
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))
        if client is not None:
            client.close()
