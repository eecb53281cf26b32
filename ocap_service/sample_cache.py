"""The on-device sample cache: per predicted class, a bounded and diverse set of images chosen by the
streaming KL rule (``ocap_core.selection``, numpy only), kept for the personalization worker.

Each sample is one ``.npz`` (image and penultimate features) written with mode 0600 by tmp + fsync +
rename and indexed in the ``samples`` table. A fixed, hash-chosen share of sample ids goes to a
separate validation buffer, a random reservoir (unbiased held-back frames to judge candidates on). The byte quota is never exceeded: when it is reached, a class holding fewer
samples takes room from the largest class of its split (that class's weakest sample goes), and the
largest classes only change by the KL rule's replacements. On restart the stored samples are offered
again, in the order they came, to fresh selectors, so the cache resumes the state it had; nothing
leaves the device and ``forget`` deletes everything.
"""

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from ocap_core.errors import OcapError
from ocap_core.selection import VAL_SELECTOR, Offer, image_digest, make_selector, split_for, val_capacity

from . import faults
from .db import open_db, transaction
from .errors import ServiceError

log = logging.getLogger(__name__)
SPLITS = ("train", "val")
# Frames offered lately (their pixels' 8-byte digest, as an int): one seen before is declined even when the
# selector turned it down then. A replay offers its images again and again, and a frame turned down in one
# pass could replace a sample in the next, so what the cache held when personalization began depended on
# how many passes had come by then (the README demo's specialists differed from run to run). About 1 MB.
SEEN_MAX = 16384


def _write_private(path: Path, image: np.ndarray, features: np.ndarray) -> int:
    """Write one sample file readable by its owner only; returns its size."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, image=image, features=features)
        f.flush()
        os.fsync(f.fileno())
    faults.point("cache.file_written")
    os.replace(tmp, path)
    return path.stat().st_size


class SampleCache:
    """Offer every (image, features, class) the base model saw; the cache keeps what the selector picks."""

    def __init__(self, cache_dir: Path, db_path: Path, per_class: int = 256, val_share: float = 0.2,
                 quota_bytes: int = 256 * 2 ** 20, selector: str = "kl", seed: int = 0) -> None:
        if per_class < 1 or quota_bytes < 1 or not 0 <= val_share < 1:
            raise ServiceError(f"sample cache: per_class and quota_bytes must be >= 1 and val_share in [0, 1), "
                               f"got {per_class}, {quota_bytes}, {val_share}")
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.per_class, self.val_share, self.quota = per_class, val_share, quota_bytes
        self._selector_args = (selector, seed)
        self._db = open_db(Path(db_path))
        self._lock = threading.Lock()
        self._reset_selectors()
        self.bytes = 0
        self.declined_for_quota = 0
        self.evicted_for_quota = 0
        self.declined_duplicates = 0
        self._digest_of: Dict[str, str] = {}     # path -> digest of its pixels, for every sample held
        self._held: Set[str] = set()            # digests of the samples held: a copy is not a new sample
        self._seen: Dict[int, None] = OrderedDict()     # the frames offered lately, oldest first (``SEEN_MAX``)
        self._resume()

    def _reset_selectors(self) -> None:
        name, seed = self._selector_args
        try:
            self._sel = {"train": make_selector(name, self.per_class, seed=seed),
                         "val": make_selector(VAL_SELECTOR, val_capacity(self.per_class), seed=seed + 1)}
        except OcapError as e:
            raise ServiceError(f"sample cache: {e}") from e

    def _resume(self) -> None:
        """Re-offer the indexed samples, oldest first, in one transaction: a crash half-way leaves the
        old index whole (row by row it left files on disk that no row named, so ``forget`` missed them).
        Then remove sample files no row names (a crash or a failed insert between a file's write and
        its row): nothing else would ever offer, count or forget them."""
        with transaction(self._db):
            self._resume_rows()
        held = {Path(p).name for p in self._digest_of}
        stray = [f for f in list(self.dir.glob("*.npz")) + list(self.dir.glob(".*.npz.tmp")) if f.name not in held]
        for f in stray:
            with contextlib.suppress(FileNotFoundError):      # (unlink's missing_ok= is 3.8+)
                f.unlink()
        log.info("sample cache resumed: %s%s", self.counts(), f"; {len(stray)} unindexed file(s) removed" if stray else "")

    def _resume_rows(self) -> None:
        rows = self._db.execute("SELECT class_id, split, path, bytes FROM samples ORDER BY created, id").fetchall()
        self._db.execute("DELETE FROM samples")
        for class_id, split, path, size in rows:
            try:
                with np.load(path) as z:
                    image, features = z["image"], z["features"]
            except (OSError, ValueError, KeyError) as e:
                log.warning("sample %s unreadable (%s); dropped", path, e)
                with contextlib.suppress(FileNotFoundError):
                    Path(path).unlink()
                continue
            self._place(str(path), image, features, int(class_id), split, None, stored_size=int(size),
                        digest=image_digest(image))

    def offer(self, image: np.ndarray, features: np.ndarray, class_id: int, confidence: float) -> bool:
        """Offer one frame the base model classified; True when the cache kept it."""
        image = np.ascontiguousarray(image, np.uint8)
        # A frame seen again (a replay, a still scene) is not a new sample: copies made n held-back images
        # look like many more than they were (a newcomer's ocapd replaying 77 distinct digits judged 24.9x at
        # 0.00 pp, and the gate then measured 89.7 %), and a copy in both splits judged candidates on their
        # own training images (the README demo: -0.25 pp judged, -1.27 pp on test images). So the split
        # follows the pixels, and a copy of a sample held, or of a frame offered lately, is declined.
        digest = image_digest(image)
        split = split_for(digest, self.val_share)
        seen = int(digest, 16)
        with self._lock:
            if digest in self._held or seen in self._seen:
                self.declined_duplicates += 1
                return False
            self._seen[seen] = None
            if len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            return self._place(uuid.uuid4().hex, image, np.asarray(features, np.float32), int(class_id), split,
                               float(confidence), digest=digest)

    def _place(self, item: str, image: np.ndarray, features: np.ndarray, class_id: int, split: str,
               confidence: Optional[float], stored_size: Optional[int] = None, digest: str = "") -> bool:
        """Offer to the split's selector; ``item`` is a new sample id, or (with ``stored_size``) the
        path of a sample already on disk, being resumed."""
        path = Path(item) if stored_size is not None else self.dir / f"{class_id}-{item}.npz"
        # the quota is checked against an upper bound of the file's size (arrays + npz headers < 4 KiB)
        size = stored_size if stored_size is not None else image.nbytes + features.nbytes + 4096
        sel = self._sel[split]
        self._make_room(split, class_id, size)
        offer = sel.offer(str(path), features, class_id)
        if offer.stored and offer.evicted is not None:
            self._drop(str(offer.evicted))
        if offer.stored and self.bytes + size > self.quota:     # an addition there is no room for
            sel.discard(class_id, str(path))
            self.declined_for_quota += 1
            offer = Offer(False)
        if not offer.stored:
            if stored_size is not None:
                path.unlink()
            return False
        if stored_size is None:
            size = _write_private(path, image, features)
        self.bytes += size
        self._digest_of[str(path)] = digest
        self._held.add(digest)
        self._db.execute("INSERT INTO samples (class_id, confidence, score, split, path, bytes, created) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (class_id, confidence, offer.score, split, str(path), size, time.time()))
        faults.point("cache.indexed")
        return True

    def _make_room(self, split: str, class_id: int, size: int) -> None:
        """Under the quota, a class holding fewer samples takes room from the split's largest class
        (its weakest sample), so a class that appears late still gets its share."""
        sel = self._sel[split]
        while self.bytes + size > self.quota:
            own = sel.held(class_id)
            held, victim = max(((sel.held(k), k) for k in sel.buffers), default=(0, -1))
            if held <= own + 1:
                return
            self._drop(str(sel.evict(victim)))
            self.evicted_for_quota += 1

    def _drop(self, path: str) -> None:
        row = self._db.execute("SELECT bytes FROM samples WHERE path = ?", (path,)).fetchone()
        self._db.execute("DELETE FROM samples WHERE path = ?", (path,))
        self.bytes -= int(row[0]) if row else 0
        self._held.discard(self._digest_of.pop(path, ""))
        Path(path).unlink()

    def counts(self) -> Dict[str, Dict[int, int]]:
        """Samples held per split and class."""
        out: Dict[str, Dict[int, int]] = {s: {} for s in SPLITS}
        with self._lock:
            rows = self._db.execute("SELECT split, class_id, COUNT(*) FROM samples GROUP BY split, class_id").fetchall()
        for split, k, n in rows:
            out[split][int(k)] = int(n)
        return out

    def load(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """(images, class ids) of one split, for the personalization worker."""
        if split not in SPLITS:
            raise ServiceError(f"split must be one of {SPLITS}, got {split!r}")
        with self._lock:
            rows = self._db.execute("SELECT path, class_id FROM samples WHERE split = ? ORDER BY id",
                                    (split,)).fetchall()
            images: List[np.ndarray] = []
            for path, _ in rows:
                with np.load(path) as z:
                    images.append(z["image"])
        ids = np.asarray([k for _, k in rows], np.int64)
        return (np.stack(images) if images else np.zeros((0,), np.uint8)), ids

    def forget(self) -> int:
        """Delete every cached sample (files and rows); returns how many."""
        with self._lock:
            paths = [p for (p,) in self._db.execute("SELECT path FROM samples").fetchall()]
            for p in paths:
                self._drop(p)
            self._reset_selectors()
            self._seen.clear()
            return len(paths)

    def close(self) -> None:
        self._db.close()
