"""Input sources that feed the one inference path, and their registry.

``SOURCES`` maps each source type's name to its class; the class declares its ``options`` (name, kind,
default, range, help) and how it is checked and built from them. ``python -m ocap_service`` makes its flags
from it, ocapd's config schema its ``[source:NAME]`` keys, and both the annotated ``systemd/ocap.ini``
and the README's table of sources are rendered from it, so there is no list of source types anywhere
else. A type is built in three steps that both front ends share: ``settle`` (defaults that depend on
the host, rules between options; no disk), ``check`` (files, data and the base model, before anything
starts) and ``create`` (the thread). A problem is an ``OptionError`` naming the option, which each front
end names its own way (``--spool DIR``, ``[source:NAME] spool = DIR``).

``ReplaySource`` streams a dataset at a set rate under a class-mix schedule (what the demo and the
benchmarks drive); ``DirectorySource`` watches a spool folder; ``CameraSource`` reads OpenCV frames. A
frame a source cannot have classified (it does not fit the model, or inference failed) is counted by
``RejectedFrames``: one event when rejections start, a log line at most once a minute."""

import logging
import math
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import numpy as np

from ocap_core.data import load_dataset, read_image
from ocap_core.errors import OcapError
from ocap_core.package import Card
from ocap_core.preprocess import preprocess

from .durations import DurationError, parse_duration
from .errors import ServiceError
from .event_kinds import Event
from .events import EventLog

log = logging.getLogger(__name__)
Mix = List[Tuple[np.ndarray, np.ndarray, float]]      # (class ids, probabilities, seconds) per segment
Sink = Callable[[np.ndarray], object]                  # takes a batch (N x H x W x C uint8)
FASHION_MNIST = ("fashion-mnist", "fmnist")
MIX_SYNTAX = "CLASS:SHARE,...@DURATION segments joined by ';', e.g. 0:0.5,3:0.5@10min; 0:0.4,9:0.6@5min"
# option kinds; ocapd's config schema has a converter of the same name for each
STR, PATH, OPTPATH, FLOAT, DURATION, CHOICE, MIX = "str", "path", "optional path", "float", "duration", "choice", \
    "mix"


def parse_mix(text: str, num_classes: Optional[int]) -> Mix:
    """``0:0.5,3:0.3,7:0.2@10min; 0:0.4,9:0.6@5min`` -> segments (shares normalised), repeated in a cycle.
    A segment's duration is read by ``parse_duration``, as ocapd's config reads its durations, and must
    be > 0. Class ids must be in ``0..num_classes-1`` (the model's classes); ``None`` checks the syntax
    only."""
    out: Mix = []
    for part in [p.strip() for p in text.split(";") if p.strip()]:
        items, at, duration = part.rpartition("@")
        if not at or not items.strip():
            raise ServiceError(f"class mix segment {part!r}: expected {MIX_SYNTAX}")
        try:
            seconds = parse_duration(duration)
        except DurationError as e:
            raise ServiceError(f"class mix segment {part!r}: {e}") from None
        if seconds <= 0:
            raise ServiceError(f"class mix segment {part!r}: its duration must be > 0")
        ids, shares = [], []
        for item in items.split(","):
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
        if any(not math.isfinite(p) or p < 0 for p in shares) or sum(shares) <= 0:
            raise ServiceError(f"class mix segment {part!r}: shares must be >= 0 and not all 0")
        out.append((np.asarray(ids), np.asarray(shares) / sum(shares), seconds))
    if not out:
        raise ServiceError("class mix is empty")
    return out


class OptionError(ServiceError):
    """A source option that cannot be used: its ``key``, ``value`` and ``why`` (one line). Each front end
    names the option its own way: ``--spool X`` on the command line, ``[source:NAME] spool = 'X'`` in
    ocapd's config."""

    def __init__(self, key: str, value: Any, why: str) -> None:
        self.key, self.value, self.why = key, value, " ".join(why.splitlines())
        super().__init__(f"{key} = {str(value)!r}: {self.why}")


@dataclass(frozen=True)
class Option:
    """One option of a source type: ``name`` (the INI key; the flag ``--name`` with '-' for '_', or
    ``--flag`` where set), ``kind`` (``STR``, ``PATH``, ``OPTPATH``, ``FLOAT``, ``DURATION``, ``CHOICE``,
    ``MIX``), ``default`` as text (None: required), the allowed ``range`` (``> 0``), ``choices``, one line
    of ``help``, and an ``example`` shown for a required one."""

    name: str
    kind: str
    default: Optional[str]
    help: str
    range: str = ""
    choices: Tuple[str, ...] = ()
    example: str = ""
    flag: str = ""

    @property
    def cli_flag(self) -> str:
        return "--" + (self.flag or self.name.replace("_", "-"))

    def parse(self, text: str) -> Any:
        """Command-line text -> value (``OptionError`` naming the option). ocapd's config converts INI
        text with its own, stricter rules (absolute paths, ranges); a source checks its ranges itself."""
        if self.kind == FLOAT:
            try:
                return float(text)
            except ValueError:
                raise OptionError(self.name, text, "expected a number") from None
        if self.kind == DURATION:
            try:
                return parse_duration(text)
            except DurationError as e:
                raise OptionError(self.name, text, str(e)) from None
        if self.kind == CHOICE and text not in self.choices:
            raise OptionError(self.name, text, f"expected one of {', '.join(self.choices)}")
        if self.kind in (PATH, OPTPATH):
            return Path(text) if text else None
        return text


@dataclass(frozen=True)
class SourceContext:
    """What sources are checked and built against: the base model's ``card`` (image size, classes),
    ``model`` (how the front end names it: ``[model] base = fmnist-cnn``, ``--model fmnist-cnn``) and
    ``spell`` (key, value -> how the front end writes that setting: ``split = all``, ``--split all``)."""

    card: Card
    model: str
    spell: Callable[[str, str], str]


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
    unexpected error (not an ``OcapError``), and only on a line that is written. Used by one thread;
    ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(self, source: str, events: Optional[EventLog] = None, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.events, self.interval, self.clock = source, events, interval, clock
        self.total = 0
        self._unlogged = 0
        self._reason = ""
        self._last_line: Optional[float] = None
        self._last_reject: Optional[float] = None

    def add(self, reason: str, error: Optional[BaseException] = None) -> None:
        """Count one rejected frame and why (``error``: the exception, for its traceback)."""
        now = self.clock()
        self.total += 1
        self._unlogged += 1
        self._reason = reason
        if self._last_reject is None or now - self._last_reject >= self.interval:
            if self.events is not None:
                self.events.record(Event.FRAMES_REJECTED, source=self.source, reason=reason)
        self._last_reject = now
        self._log(now, error)

    def tick(self) -> None:
        """Write the line for rejections not yet logged once ``interval`` has passed (sources call this
        from their loops, so the count of a burst is logged even when no rejection follows it)."""
        self._log(self.clock(), None)

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
    ``rejects`` what it could not (default: logged under the source's type, no events).

    A registered type (in ``SOURCES``) also declares its ``options`` and overrides ``create``, and
    ``settle`` and ``check`` where it has something to settle or check; its docstring's first line is
    its one-line description in the generated documentation."""

    name = "source"
    options: Tuple[Option, ...] = ()

    def __init__(self, rejects: Optional[RejectedFrames] = None) -> None:
        self.frames = 0
        self.rejects = rejects or RejectedFrames(self.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    @classmethod
    def settle(cls, options: Dict[str, Any], state_dir: Path) -> Dict[str, Any]:
        """``options`` (every option converted, defaults filled in) with what depends on the host filled
        in and the rules between options checked, without touching the disk (``OptionError``)."""
        return dict(options)

    @classmethod
    def check(cls, options: Dict[str, Any], ctx: SourceContext) -> Dict[str, Any]:
        """Check settled ``options`` against the disk and the base model before anything starts
        (``OptionError``); returns them with what the check loaded, for ``create``."""
        return dict(options)

    @classmethod
    def create(cls, checked: Dict[str, Any], ctx: SourceContext, sink: Sink,
               rejects: Optional[RejectedFrames] = None) -> "ThreadSource":
        """The source (not started) for ``check``'s result, feeding batches to ``sink``."""
        raise NotImplementedError

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
    """Replays a dataset at a set rate under a class-mix schedule (demos, benchmarks).

    Calls ``sink(image)`` ``rate`` times a second with images drawn per the mix. The data is loaded in
    the base model's class space: an image folder's sub-folders named as its classes (or by class id)
    take those ids; labels outside it are the data loader's error."""

    name = "replay"
    options = (
        Option("data", STR, "fashion-mnist", "Dataset to replay: fashion-mnist, an image folder or an .npz file."),
        Option("split", CHOICE, "test", "Split to replay: test (the data's own test set, else a seeded 1/7 per "
               "class), train, val or all (every image).", choices=("train", "val", "test", "all")),
        Option("rate", FLOAT, "20", "Frames per second.", "> 0"),
        Option("mix", MIX, "", "Class mix schedule, repeated in a cycle; empty: uniform over all classes."),
    )

    @classmethod
    def check(cls, options: Dict[str, Any], ctx: SourceContext) -> Dict[str, Any]:
        """Loads the data and parses the mix: both must fit the base model, and the data must hold
        images of every class the mix names (adds ``dataset`` and ``schedule``)."""
        spec, split, mix = options["data"], options["split"], options["mix"]
        if spec not in FASHION_MNIST and not Path(spec).exists():
            where = "" if Path(spec).is_absolute() else f" (a relative path, from {os.getcwd()})"
            raise OptionError("data", spec, f"no such file or directory{where}")
        try:                                # in the model's class space: folder names map to its class ids
            data = load_dataset(spec, split, class_names=ctx.card.class_names)
        except OcapError as e:              # the loader's hint names ocap's flag; say it as the front end does
            why = str(e).replace("use --split all", "use " + ctx.spell("split", "all"))
            raise OptionError("data", spec, f"cannot load its {split} split for the base model ({ctx.model}): "
                                            f"{why}") from None
        if not len(data):
            raise OptionError("data", spec, f"its {split} split holds no images")
        why = data_misfit(data.x, data.y, ctx.card)
        if why:
            raise OptionError("data", spec, f"{why} ({ctx.model})")
        text = mix or ",".join(f"{k}:1" for k in np.unique(data.y)) + "@1h"
        for classes, model in ((None, ""), (len(ctx.card.class_names), f" ({ctx.model})")):  # syntax, then ids
            try:
                schedule = parse_mix(text, classes)
            except ServiceError as e:
                raise OptionError("mix", mix, f"{e}{model}") from None
        missing = sorted({int(k) for ids, _, _ in schedule for k in ids} - {int(k) for k in np.unique(data.y)})
        if missing:
            raise OptionError("mix", mix, f"the {split} split of {ctx.spell('data', spec)} has no images of "
                                          f"class(es) {missing}")
        return dict(options, dataset=data, schedule=schedule)

    @classmethod
    def create(cls, checked: Dict[str, Any], ctx: SourceContext, sink: Sink,
               rejects: Optional[RejectedFrames] = None) -> "ReplaySource":
        data = checked["dataset"]
        return cls(data.x, data.y, lambda img: sink(img[None]), checked["rate"], checked["schedule"],
                   rejects=rejects)

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
    """Watches a spool directory; each new image file is classified, then deleted or moved.

    Each new image file (PNG, JPEG, PGM, ..., or a uint8 .npy) is passed to ``sink`` and then deleted,
    or moved to ``done_dir``; a file that cannot be read, or whose image does not fit the model, goes to
    ``reject_dir`` (counted by ``rejects``). Names starting with '.' (files being written) are skipped.
    Only regular files are read: a symbolic link (which could point anywhere the daemon may read), a
    device or a FIFO is rejected unread, and so is a file over ``max_bytes``."""

    name = "directory"
    options = (
        Option("spool", PATH, None, "Directory watched for image files (PNG, JPEG, PGM, .npy, ...).",
               example="/var/spool/ocap"),
        Option("done_dir", OPTPATH, "", "Where handled files are moved; empty: they are deleted."),
        Option("reject_dir", OPTPATH, "", "Where unreadable files are moved; empty: STATE_DIR/rejected."),
        Option("interval", DURATION, "1s", "How often the spool directory is scanned.", "> 0"),
    )

    @classmethod
    def settle(cls, options: Dict[str, Any], state_dir: Path) -> Dict[str, Any]:
        """``reject_dir`` defaults to STATE_DIR/rejected; neither it nor ``done_dir`` may be the spool."""
        out = dict(options)
        if out["reject_dir"] is None:
            out["reject_dir"] = Path(state_dir) / "rejected"
        for key in ("done_dir", "reject_dir"):
            if out[key] == out["spool"]:
                raise OptionError(key, out[key], f"must differ from spool ({out['spool']})")
        return out

    @classmethod
    def check(cls, options: Dict[str, Any], ctx: SourceContext) -> Dict[str, Any]:
        """The spool is a directory this user can read and remove files in; done and reject
        directories, where they exist, are directories."""
        spool = Path(options["spool"])
        if not spool.is_dir():
            raise OptionError("spool", spool, "not a directory" if spool.exists() else "no such directory")
        if not os.access(str(spool), os.R_OK | os.W_OK | os.X_OK):
            raise OptionError("spool", spool, f"this user (uid {os.geteuid()}) cannot read and remove files in it")
        for key in ("done_dir", "reject_dir"):
            d = options[key]
            if d is not None and Path(d).exists() and not Path(d).is_dir():
                raise OptionError(key, d, "exists and is not a directory")
        return dict(options)

    @classmethod
    def create(cls, checked: Dict[str, Any], ctx: SourceContext, sink: Sink,
               rejects: Optional[RejectedFrames] = None) -> "DirectorySource":
        return cls(Path(checked["spool"]), sink, Path(checked["reject_dir"]), checked["done_dir"],
                   poll=checked["interval"], rejects=rejects)

    def __init__(self, spool: Path, sink: Callable[[np.ndarray], object], reject_dir: Path,
                 done_dir: Optional[Path] = None, poll: float = 0.2, max_bytes: int = 16 * 2 ** 20,
                 rejects: Optional[RejectedFrames] = None) -> None:
        self.spool, self.sink, self.reject_dir, self.done_dir, self.poll = Path(spool), sink, Path(reject_dir), \
            (Path(done_dir) if done_dir else None), poll
        if not self.spool.is_dir():
            raise ServiceError(f"spool directory {self.spool} does not exist")
        if not poll > 0:
            raise ServiceError(f"spool scan interval must be > 0 seconds, got {poll}")
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
    """Reads frames from an OpenCV camera (needs OpenCV).

    Frames from OpenCV's ``VideoCapture`` (a device index or a GStreamer pipeline string), converted
    to the model's channels (gray or RGB) and size, at most ``rate`` per second. OpenCV is optional;
    the camera is opened when the source is created, not when it is checked."""

    name = "camera"
    options = (
        Option("device", STR, "0", "OpenCV camera: a device index or a GStreamer pipeline.", flag="camera"),
        Option("rate", FLOAT, "10", "Most frames per second.", "> 0"),
    )

    @classmethod
    def create(cls, checked: Dict[str, Any], ctx: SourceContext, sink: Sink,
               rejects: Optional[RejectedFrames] = None) -> "CameraSource":
        return cls(checked["device"], sink, tuple(ctx.card.input.shape), rate=checked["rate"], rejects=rejects)

    def __init__(self, device: str, sink: Callable[[np.ndarray], object], shape: Tuple[int, int, int],
                 rate: float = 10.0, rejects: Optional[RejectedFrames] = None) -> None:
        if not rate > 0:
            raise ServiceError(f"camera rate must be > 0 frames per second, got {rate}")
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


SOURCES: Dict[str, Type[ThreadSource]] = {cls.name: cls for cls in (ReplaySource, DirectorySource, CameraSource)}


def summary(cls: Type[ThreadSource]) -> str:
    """A source type's one-line description: the first line of its docstring."""
    return (cls.__doc__ or cls.name).strip().splitlines()[0]


def render_markdown() -> str:
    """The README's table of source types and their options (a test keeps the README equal to it)."""
    rows = ["| source | INI key | `python -m ocap_service` | default | meaning |", "|---|---|---|---|---|"]
    for name, cls in SOURCES.items():
        rows.append(f"| `{name}` | `type = {name}` | `--source {name}` | | {summary(cls)} |")
        for o in cls.options:
            default = "required" if o.default is None else (f"`{o.default}`" if o.default else "empty")
            rows.append(f"| | `{o.name}` | `{o.cli_flag}` | {default} | {o.help} |")
    return "\n".join(rows) + "\n"
