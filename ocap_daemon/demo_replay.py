"""The demo's camera: a client thread that sends labelled images to ``ocapd`` over its control socket in
a class mix at a steady rate and keeps what each request got, so the demo and the tests can score the
answers and count failed requests (the daemon never sees a label)."""

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
        self.mix: Dict[int, float] = {}
        self.log: List[tuple] = []
        super().__init__()

    def set_mix(self, mix: Dict[int, float]) -> None:
        total = sum(mix.values())
        self.mix = {k: v / total for k, v in mix.items()}

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
            pool = self.images[k]
            img = pool[int(self.rng.integers(len(pool)))]
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
