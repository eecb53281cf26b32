"""Input sources that feed the one inference path. ``ReplaySource`` streams a dataset at a set rate
under a class-mix schedule (what the demo and the benchmarks drive); ``DirectorySource`` watches a
spool folder. A frame a source cannot have classified (it does not fit the model, or inference failed)
is counted by ``RejectedFrames``: one event when rejections start, a log line at most once a minute."""

import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from ocap_core.data import read_image
from ocap_core.errors import OcapError
from ocap_core.package import Card
from ocap_core.preprocess import preprocess

from .errors import ServiceError
from .events import EventLog

log = logging.getLogger(__name__)
Mix = List[Tuple[np.ndarray, np.ndarray, float]]      # (class ids, probabilities, seconds) per segment
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_mix(text: str, num_classes: Optional[int]) -> Mix:
    """``0:0.5,3:0.3,7:0.2@10m; 0:0.4,9:0.6@5m`` -> segments (shares normalised), repeated in a cycle.
    Class ids must be in ``0..num_classes-1`` (the model's classes); ``None`` checks the syntax only."""
    out: Mix = []
    for part in [p.strip() for p in text.split(";") if p.strip()]:
        m = re.fullmatch(r"(.+?)@\s*(\d+(?:\.\d+)?)\s*([smh])", part)
        if not m:
            raise ServiceError(f"class mix segment {part!r}: expected 'CLASS:SHARE,...@DURATION' (e.g. 0:0.5,3:0.5@10m)")
        ids, shares = [], []
        for item in m.group(1).split(","):
            try:
                k, p = item.split(":")
                ids.append(int(k))
                shares.append(float(p))
            except ValueError as e:
                raise ServiceError(f"class mix segment {part!r}: bad item {item.strip()!r}") from e
        if len(set(ids)) != len(ids):
            raise ServiceError(f"class mix segment {part!r}: classes must be distinct")
        if any(k < 0 for k in ids):
            raise ServiceError(f"class mix segment {part!r}: class ids must be >= 0")
        outside = sorted({k for k in ids if num_classes is not None and k >= num_classes})
        if outside:
            raise ServiceError(f"class mix segment {part!r}: class id(s) {outside} are not among the model's "
                               f"{num_classes} classes 0..{num_classes - 1}")
        if any(p < 0 for p in shares) or sum(shares) <= 0:
            raise ServiceError(f"class mix segment {part!r}: shares must be >= 0 and not all 0")
        seconds = float(m.group(2)) * _UNITS[m.group(3)]
        out.append((np.asarray(ids), np.asarray(shares) / sum(shares), seconds))
    if not out:
        raise ServiceError("class mix is empty")
    return out


def _hwc(shape: Tuple[int, ...]) -> str:
    h, w, c = shape
    return f"{h}x{w} ({c} channel{'s' if c != 1 else ''})"


def data_misfit(images: np.ndarray, labels: np.ndarray, card: Card) -> str:
    """Why a data set (N x H x W x C uint8 images, class ids) does not fit the model of ``card``, or "":
    its images must be taken as ``preprocess`` takes them (the model's height and width; gray and RGB
    are converted into each other) and its labels must be among the model's classes."""
    if len(images):
        try:
            preprocess(images[:1], card.input)
        except OcapError:
            c, h, w = card.input.shape
            return f"images are {_hwc(images.shape[1:])}, the model {card.name} takes {_hwc((h, w, c))}"
    n = len(card.class_names)
    outside = sorted(int(k) for k in np.unique(labels) if not 0 <= k < n)
    if outside:
        more = f" and {len(outside) - 10} more" if len(outside) > 10 else ""
        return (f"labels {outside[:10]}{more} are not among the model {card.name}'s {n} classes 0..{n - 1}")
    return ""


class RejectedFrames:
    """Frames a source could not have classified (they do not fit the model, the file is unreadable,
    or inference failed on them). Each is counted; the first of a run (no rejection in the ``interval``
    before it) records one ``frames_rejected`` event, and a log line is written at most once per
    ``interval``, saying how many were rejected since the line before. A traceback is logged only for an
    unexpected error (not an ``OcapError``), and only on a line that is written. Used by one thread."""

    def __init__(self, source: str, events: Optional[EventLog] = None, interval: float = 60.0) -> None:
        self.source, self.events, self.interval = source, events, interval
        self.total = 0
        self._unlogged = 0
        self._reason = ""
        self._last_line: Optional[float] = None
        self._last_reject: Optional[float] = None

    def add(self, reason: str, error: Optional[BaseException] = None) -> None:
        """Count one rejected frame and why (``error``: the exception, for its traceback)."""
        now = time.monotonic()
        self.total += 1
        self._unlogged += 1
        self._reason = reason
        if self._last_reject is None or now - self._last_reject >= self.interval:
            if self.events is not None:
                self.events.record("frames_rejected", source=self.source, reason=reason)
        self._last_reject = now
        self._log(now, error)

    def tick(self) -> None:
        """Write the line for rejections not yet logged once ``interval`` has passed (sources call this
        from their loops, so the count of a burst is logged even when no rejection follows it)."""
        self._log(time.monotonic(), None)

    def _log(self, now: float, error: Optional[BaseException]) -> None:
        if not self._unlogged or (self._last_line is not None and now - self._last_line < self.interval):
            return
        trace = error if error is not None and not isinstance(error, OcapError) else None
        if self._last_line is None:
            log.warning("source %s: frame rejected: %s (rejections are logged at most once per %g s)",
                        self.source, self._reason, self.interval, exc_info=trace)
        else:
            log.warning("source %s: %d frame(s) rejected in the last %.0f s, the latest: %s (%d in all)",
                        self.source, self._unlogged, now - self._last_line, self._reason, self.total,
                        exc_info=trace)
        self._last_line = now
        self._unlogged = 0


class ThreadSource:
    """A source that runs ``_run`` in its own daemon thread until ``stop``; ``frames`` counts what it fed,
    ``rejects`` what it could not (default: logged under the source's type, no events)."""

    name = "source"

    def __init__(self, rejects: Optional[RejectedFrames] = None) -> None:
        self.frames = 0
        self.rejects = rejects or RejectedFrames(self.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    @property
    def rejected(self) -> int:
        return self.rejects.total

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class ReplaySource(ThreadSource):
    """Calls ``sink(image)`` ``rate`` times a second with images drawn per the mix."""

    name = "replay"

    def __init__(self, images: np.ndarray, labels: np.ndarray, sink: Callable[[np.ndarray], object], rate: float,
                 mix: Mix, seed: int = 0, rejects: Optional[RejectedFrames] = None) -> None:
        if rate <= 0:
            raise ServiceError(f"replay rate must be > 0 frames per second, got {rate}")
        self.images, self.sink, self.rate, self.mix = images, sink, rate, mix
        self.by_class = {int(k): np.flatnonzero(labels == k) for k in np.unique(labels)}
        missing = sorted({int(k) for ids, _, _ in mix for k in ids} - set(self.by_class))
        if missing:
            raise ServiceError(f"replay data has no images of classes {missing}")
        self.rng = np.random.default_rng(seed)
        super().__init__(rejects)

    def segment_at(self, elapsed: float) -> int:
        cycle = sum(s for _, _, s in self.mix)
        t = elapsed % cycle
        for i, (_, _, s) in enumerate(self.mix):
            if t < s:
                return i
            t -= s
        return len(self.mix) - 1

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            ids, p, _ = self.mix[self.segment_at(time.monotonic() - t0)]
            k = int(self.rng.choice(ids, p=p))
            try:
                self.sink(self.images[self.rng.choice(self.by_class[k])])
            except Exception as e:  # a bad frame must not end the stream
                self.rejects.add(str(e), e)
            self.rejects.tick()
            self.frames += 1
            delay = t0 + self.frames / self.rate - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)



class DirectorySource(ThreadSource):
    """Watches a spool folder: each new image file (PNG, JPEG, PGM, ..., or a uint8 .npy)
    is passed to ``sink`` and then deleted, or moved to ``done_dir``; a file that cannot be read, or
    whose image does not fit the model, goes to ``reject_dir`` (counted by ``rejects``). Names starting with '.' (files being written) are skipped.
    Only regular files are read: a symbolic link (which could point anywhere the daemon may read), a
    device or a FIFO is rejected unread, and so is a file over ``max_bytes``."""

    name = "directory"

    def __init__(self, spool: Path, sink: Callable[[np.ndarray], object], reject_dir: Path,
                 done_dir: Optional[Path] = None, poll: float = 0.2, max_bytes: int = 16 * 2 ** 20,
                 rejects: Optional[RejectedFrames] = None) -> None:
        self.spool, self.sink, self.reject_dir, self.done_dir, self.poll = Path(spool), sink, Path(reject_dir), \
            (Path(done_dir) if done_dir else None), poll
        if not self.spool.is_dir():
            raise ServiceError(f"spool directory {self.spool} does not exist")
        for d in (self.reject_dir, self.done_dir):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        super().__init__(rejects)

    def scan(self) -> int:
        """Handle every file now in the spool, oldest first; returns how many."""
        entries = [(p, p.lstat()) for p in self.spool.iterdir() if not p.name.startswith(".")]
        files = [p for p, st in sorted(entries, key=lambda e: (e[1].st_mtime, e[0].name))
                 if not stat.S_ISDIR(st.st_mode)]
        for path in files:
            try:
                image = self._read(path)
            except OcapError as e:
                self._reject(path, str(e), e)
                continue
            try:
                self.sink(image[None])
            except Exception as e:  # not fitting the model, or failing: moved aside like an unreadable one
                self._reject(path, f"{path.name}: {e}", e)
                continue
            self.frames += 1
            if self.done_dir is not None:
                os.replace(path, self.done_dir / path.name)
            else:
                path.unlink()
        return len(files)

    def _reject(self, path: Path, reason: str, error: Exception) -> None:
        os.replace(path, self.reject_dir / path.name)
        self.rejects.add(reason, error)

    def _read(self, path: Path) -> np.ndarray:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise OcapError(f"{path} is not a regular file (a link, device or pipe): not read")
        if st.st_size > self.max_bytes:
            raise OcapError(f"{path} has {st.st_size} bytes, over the limit of {self.max_bytes}")
        return read_image(path)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except OSError as e:
                log.error("spool %s: %s", self.spool, e)
            self.rejects.tick()
            self._stop.wait(self.poll)


class CameraSource(ThreadSource):
    """Frames from OpenCV's ``VideoCapture`` (a device index or a GStreamer pipeline string), converted
    to the model's channels (gray or RGB) and size, at most ``rate`` per second. OpenCV is optional."""

    name = "camera"

    def __init__(self, device: str, sink: Callable[[np.ndarray], object], shape: Tuple[int, int, int],
                 rate: float = 10.0, rejects: Optional[RejectedFrames] = None) -> None:
        try:
            import cv2
        except ImportError as e:
            raise ServiceError("the camera source needs OpenCV: pip install opencv-python-headless "
                               "(on Jetson: NVIDIA's OpenCV with GStreamer)") from e
        self.cv2 = cv2
        self.cap = cv2.VideoCapture(int(device) if device.isdigit() else device)
        if not self.cap.isOpened():
            raise ServiceError(f"camera {device!r} cannot be opened")
        self.sink, self.shape, self.rate = sink, shape, rate
        super().__init__(rejects)

    def stop(self) -> None:
        super().stop()
        self.cap.release()

    def _run(self) -> None:
        c, h, w = self.shape
        while not self._stop.is_set():
            ok, frame = self.cap.read()
            if not ok:
                log.error("camera read failed; retrying")
                self._stop.wait(1.0)
                continue
            code = self.cv2.COLOR_BGR2GRAY if c == 1 else self.cv2.COLOR_BGR2RGB
            img = self.cv2.resize(self.cv2.cvtColor(frame, code), (w, h), interpolation=self.cv2.INTER_AREA)
            try:
                self.sink(img.reshape(1, h, w, c))
            except Exception as e:
                self.rejects.add(str(e), e)
            self.rejects.tick()
            self.frames += 1
            self._stop.wait(1.0 / self.rate)
