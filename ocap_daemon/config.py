"""ocapd's INI configuration. One schema table (``SCHEMA``: section, key, type, default, range, help)
drives parsing, validation, the frozen ``Config`` and the annotated example file ``systemd/ocap.ini``
(``render_example``), so the documentation cannot drift from what the loader accepts.

Every problem is a ``ConfigError`` whose message is one line naming the file, the section, the key, the
value and what is allowed; ``ocapd`` exits with ``EXIT_CONFIG`` (78) on it so systemd does not
restart-loop on a typo. Unknown sections and keys are errors, not warnings.
"""

import configparser
import difflib
import logging
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ocap_core.errors import OcapError
from ocap_core.package import Card, open_package
from ocap_service.durations import EXAMPLES as DURATION_EXAMPLES
from ocap_service.durations import SYNTAX as DURATION_SYNTAX
from ocap_service.durations import DurationError, parse_duration
from ocap_service.errors import ServiceError
from ocap_service.sources import MIX_SYNTAX, SOURCES, OptionError, parse_mix, summary

from . import settings
from .errors import DaemonError
from .gate import GateConfig
from .stability import StabilityConfig
from .watch import DriftConfig, ProbationConfig

log = logging.getLogger(__name__)

EXIT_CONFIG = 78                    # sysexits.h EX_CONFIG; listed in the unit's RestartPreventExitStatus=
DEFAULT_PATH = Path("/etc/ocap/ocap.ini")
SOURCE_PREFIX = "source:"
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NO_DEFAULT_SECTION = "\n"          # a name no header can have: a [DEFAULT] section is then just unknown


class ConfigError(DaemonError):
    """An invalid configuration; each line of the message names file, section, key, value and what is
    allowed (one line per problem: a file is checked whole, so every problem shows at once)."""


class _Problems:
    """The problems found in one file, gathered so that all of them are reported together."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, message: str) -> None:
        self.lines.extend(line for line in str(message).splitlines() if line not in self.lines)

    def check(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None with its ConfigError's problems noted."""
        try:
            return fn(*args)
        except ConfigError as e:
            self.add(str(e))
            return None

    def raise_any(self) -> None:
        if self.lines:
            raise ConfigError("\n".join(self.lines))


def nearest(word: str, choices: Sequence[str]) -> str:
    """'; did you mean X?' for the closest of ``choices`` to a misspelt ``word`` ('' when none is close)."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---- units -------------------------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(_NUMBER + r"\s*([A-Za-z]*)")
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}
_SIZE_HELP = "a number with unit B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024); a bare integer is bytes"


def _duration(text: str) -> float:
    """Seconds (``ocap_service.durations``: the syntax the replay mixes use too), or ValueError whose
    message is a short reason ("" when the general rule says it all)."""
    try:
        return parse_duration(text)
    except DurationError as e:
        raise ValueError(e.reason) from None


def _size(text: str) -> int:
    """Bytes, or ValueError whose message is a short reason ("" when the general rule says it all)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise ValueError("")
    unit = m.group(2).lower()
    if not unit:
        if "." in m.group(1):
            raise ValueError("a bare number is bytes and must be an integer")
        unit = "b"
    if unit not in _SIZE_UNITS:
        hint = f"; write {unit.upper()}B or {unit.upper()}iB" if unit in ("k", "m", "g", "t") else ""
        raise ValueError(f"unknown unit {m.group(2)!r}{hint}")
    value = Decimal(m.group(1)) * _SIZE_UNITS[unit]
    if value != value.to_integral_value():
        raise ValueError("not a whole number of bytes")
    return int(value)


def parse_size(text: str) -> int:
    """``100B``, ``64KiB``, ``512MB``, ``1GB`` (units case-insensitive) or a bare integer -> bytes.
    KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024."""
    try:
        return _size(text)
    except ValueError as e:
        raise ValueError(f"bad size {text!r}: {e.args[0] or 'expected ' + _SIZE_HELP}") from None


# ---- value types ---------------------------------------------------------------------------------------

STR, PATH, OPTPATH, INT, FLOAT, BOOL = "str", "path", "optional path", "int", "float", "bool"
AUTO_INT = "auto or int"            # "auto" (converted to 0) or an integer in the key's range
AUTO_FLOAT = "auto or float"        # "auto" (converted to None: derived from other keys) or a number in range
DURATION, SIZE, CHOICE, LIST, GROUP, MIX = "duration", "size", "choice", "list", "group", "mix"
AUTO_LIST = "auto or list"          # "auto" (converted to (): resolved where the daemon starts) or a LIST

_BOOLS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?" + _NUMBER + r"(?:[eE][+-]?\d+)?")


def _to_int(text: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError("")
    return int(text)


def _to_float(text: str) -> float:
    if not _FLOAT_RE.fullmatch(text) or not math.isfinite(float(text)):
        raise ValueError("")
    return float(text)


def _to_bool(text: str) -> bool:
    try:
        return _BOOLS[text.lower()]
    except KeyError:
        raise ValueError("") from None


def _to_path(text: str) -> Path:
    if not text.startswith("/"):
        raise ValueError("")
    return Path(text)


def _to_optpath(text: str) -> Optional[Path]:
    return _to_path(text) if text else None


def _to_group(text: str) -> Optional[int]:
    """A group name -> its gid (None for ""): who besides root and the daemon's user may mutate."""
    if not text:
        return None
    import grp  # POSIX only; imported here so the module loads anywhere

    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError("no such group") from None


def _to_mix(text: str) -> str:
    """The syntax only: the class ids are checked against the base model's classes once it is open."""
    if text:
        try:
            parse_mix(text, None)
        except ServiceError as e:
            raise ValueError(str(e)) from None
    return text


# kind -> (noun for messages, note after the range, converter raising ValueError(reason))
_KINDS: Dict[str, Tuple[str, str, Callable[[str], Any]]] = {
    STR: ("a string", "", str),
    PATH: ("an absolute path", "", _to_path),
    OPTPATH: ("an absolute path or empty", "", _to_optpath),
    INT: ("an integer", "", _to_int),
    AUTO_INT: ("auto or an integer", "", _to_int),
    AUTO_FLOAT: ("auto or a number", "", _to_float),
    FLOAT: ("a number", "", _to_float),
    BOOL: ("yes or no", "(also true/false, on/off, 1/0)", _to_bool),
    DURATION: ("a duration", f"(e.g. {DURATION_EXAMPLES}; a bare number is seconds)", _duration),
    SIZE: ("a size", "(e.g. 100B, 64KiB, 512MB, 1GB; a bare integer is bytes)", _size),
    CHOICE: ("one of", "", str),
    LIST: ("a comma-separated list of", "", str),
    AUTO_LIST: ("auto or a comma-separated list of", "", str),
    GROUP: ("an existing group name or empty", "", _to_group),
    MIX: ("a class mix or empty", f"({MIX_SYNTAX}; DURATION as for any duration)", _to_mix),
}


@dataclass(frozen=True)
class Key:
    """One configuration key: where it lives, its type, default (INI text; None = required), allowed
    range (``>= 2``, ``> 0``, ``[0, 1]``, ``(0, 1]``, ``0..19``; bounds in the key's own units), choices
    and a one-line meaning. Source keys have ``section="source"`` and name the source types using them."""

    section: str
    name: str
    kind: str
    default: Optional[str]
    help: str
    range: str = ""
    choices: Tuple[str, ...] = ()
    types: Tuple[str, ...] = ()
    example: str = ""

    def expected(self, units: bool = True) -> str:
        """What a valid value looks like, for messages and the example file (whose header explains
        duration and size units, hence ``units=False`` there)."""
        noun, note, _ = _KINDS[self.kind]
        if not units and self.kind in (DURATION, SIZE):
            note = ""
        if self.choices:
            noun = f"{noun} {', '.join(self.choices)}"
        if self.range:
            noun += " " + ("in " + self.range if self.range[0] in "[(" or ".." in self.range else self.range)
        return f"{noun} {note}" if note else noun

    def convert(self, text: str) -> Any:
        """INI text -> value (ValueError with a short reason, possibly "", when it is not allowed)."""
        if "\n" in text:
            raise ValueError("a value must fit on one line (an indented line continues the one above)")
        if self.kind == CHOICE:
            if text not in self.choices:
                raise ValueError("")
            return text
        if self.kind == AUTO_LIST and text == "auto":
            return ()
        if self.kind in (LIST, AUTO_LIST):
            items = [s.strip() for s in text.split(",")]
            if not text.strip() or any(s not in self.choices for s in items):
                raise ValueError("")
            if len(set(items)) != len(items):
                raise ValueError("an item is given twice")
            return tuple(items)
        if self.kind == AUTO_INT and text == "auto":
            return 0
        if self.kind == AUTO_FLOAT and text == "auto":
            return None
        value = _KINDS[self.kind][2](text)
        lo, lo_open, hi, hi_open = self._bounds()
        if (lo is not None and (value < lo or (lo_open and value == lo))) or \
                (hi is not None and (value > hi or (hi_open and value == hi))):
            raise ValueError("")
        return value

    def _bounds(self) -> Tuple[Any, bool, Any, bool]:
        """``range`` -> (low, low exclusive, high, high exclusive), bounds converted like values."""
        try:
            return settings.bounds(self.range, _KINDS[self.kind][2])
        except ValueError:
            raise AssertionError(f"schema: bad range {self.range!r} for {self.section} {self.name}") from None


def _k(section: str, name: str, kind: str, default: Optional[str], help: str, range: str = "",
       choices: str = "", types: str = "", example: str = "") -> Key:
    return Key(section, name, kind, default, help, range, tuple(choices.split("|")) if choices else (),
               tuple(types.split("|")) if types else (), example)


def _declared_keys(section: str, cls: type) -> Tuple[Key, ...]:
    """A policy section's keys from its dataclass's declarations (``ocap_daemon/settings.py``): the policy
    module says once what each key is, its default and its range."""
    return tuple(Key(section, name, d["kind"], settings.default_text(d["kind"], d["default"]), d["help"], d["range"])
                 for name, d in settings.declared(cls).items())


def _source_schema() -> Tuple[Key, ...]:
    """The ``[source:NAME]`` keys, from the source registry (``ocap_service.sources.SOURCES``): ``type``, then
    each type's options, so ``python -m ocap_service``'s flags and these keys cannot drift apart."""
    keys = [_k("source", "type", CHOICE, None, "What feeds images to the model.", choices="|".join(SOURCES))]
    for stype, cls in SOURCES.items():
        for o in cls.options:
            assert o.kind in _KINDS, f"source {stype}: option {o.name} has kind {o.kind!r}, unknown to the schema"
            keys.append(Key("source", o.name, o.kind, o.default, o.help, o.range, o.choices, (stype,), o.example))
    return tuple(keys)


SCHEMA: Tuple[Key, ...] = (
    _k("daemon", "state_dir", PATH, "/var/lib/ocap", "Model store, database and rejected input files (systemd StateDirectory=)."),
    _k("daemon", "cache_dir", PATH, "/var/cache/ocap", "Sample cache used for personalization (systemd CacheDirectory=)."),
    _k("daemon", "socket", PATH, "/run/ocap/ocap.sock", "Control socket that ocapctl and clients connect to."),
    _k("daemon", "group", GROUP, "", "Group whose members may run mutating ocapctl commands; empty: only root and the daemon's user."),
    _k("daemon", "log_level", CHOICE, "info", "Least severity that is logged.", choices="debug|info|warning|error"),
    _k("daemon", "max_connections", INT, "64", "Control-socket connections at once; more get a 'busy' reply.", ">= 1"),
    _k("daemon", "max_payload", SIZE, "1MB", "Largest predict payload (raw image bytes) a client may send.", ">= 1KB"),

    _k("model", "base", STR, "fmnist-cnn", "Base model: a shipped package name (fmnist-cnn, fmnist-resnet20, ...) or a package directory."),
    _k("model", "providers", AUTO_LIST, "auto", "Execution providers, best first; auto: those of tensorrt, cuda, cpu onnxruntime offers. Each falls back to the next.", choices="cpu|cuda|tensorrt"),
    _k("model", "tensorrt_fp16", BOOL, "yes", "TensorRT builds FP16 engines (no: FP32); engines are cached in [daemon] cache_dir/trt."),
    _k("model", "threads", INT, "1", "Threads ONNX Runtime uses per inference when serving.", ">= 1"),

    _k("log", "flush_interval", DURATION, "5s", "How often the class log is written to the database.", "> 0"),
    _k("log", "retention", DURATION, "30d", "How long class-log rows are kept.", "> 0"),
    _k("log", "low_confidence", FLOAT, "0.5", "A prediction whose top probability is below this counts as low-confidence.", "[0, 1]"),

    *_declared_keys("stability", StabilityConfig),

    _k("personalize", "enabled", BOOL, "yes", "Personalize automatically once the class set is stable (no: only when asked with ocapctl)."),
    _k("personalize", "scorer", CHOICE, "ocap", "Channel-importance scorer used for pruning.", choices="ocap|ocap-freq|cap|l1|random"),
    _k("personalize", "rule", CHOICE, "search", "search: the smallest model within max_loss; or a fixed reference rule (OCAP, CAP, hybrid).", choices="search|personalize|cap|hybrid"),
    _k("personalize", "max_loss", FLOAT, "1.0", "Points of held-back agreement with the base model (kept classes) the search may give up.", "[0, 100]"),
    _k("personalize", "samples_per_class", INT, "256", "Cached samples per kept class used for fine-tuning.", ">= 8"),
    _k("personalize", "min_samples_per_class", INT, "64", "Fewest cached samples per kept class before a run may start (<= samples_per_class).", ">= 2"),
    _k("personalize", "epochs", INT, "30", "Fine-tuning epochs of the chosen model (early-stopped on held-back samples).", ">= 1"),
    _k("personalize", "time_budget", DURATION, "20min", "A run that has worked this long is stopped and discarded; the search, whose work is epochs, half. Waiting is not work.", "> 0"),
    _k("personalize", "wall_limit", DURATION, "1h", "A run still going after this long, waiting included, is stopped and discarded (at least time_budget).", "> 0"),
    _k("personalize", "cooldown", DURATION, "1h", "Least time between the start of two runs.", ">= 0"),
    _k("personalize", "daily_cap", INT, "4", "Most automatic runs per day (0: none).", ">= 0"),
    _k("personalize", "threads", AUTO_INT, "auto", "Worker CPU threads: one per idle core (auto) or at most this many (1: the same result idle or busy).", ">= 1"),
    _k("personalize", "nice", INT, "19", "Nice value of the personalization worker.", "0..19"),
    _k("personalize", "max_temperature", FLOAT, "80", "No run starts (a running one pauses) while the hottest thermal zone is above this, in degrees C.", "> 0"),
    _k("personalize", "min_free_memory", SIZE, "512MB", "No run starts with less free memory than this.", ">= 0"),
    _k("personalize", "max_serving_p99", DURATION, "50ms", "No run starts while the 99th percentile serving latency is above this (at most 10s: 50m would be minutes).", "(0, 10s]"),
    _k("personalize", "quantize", CHOICE, "off", "int8: also an INT8 copy of each candidate; it serves if within max_loss of its FP32 parent and faster here.", choices="off|int8"),
    _k("personalize", "cascade", BOOL, "yes", "Also try each candidate with the base answering the frames it doubts; keep the cheapest (no: a specialist alone)."),

    *_declared_keys("gate", GateConfig),

    *_declared_keys("drift", DriftConfig),

    *_declared_keys("probation", ProbationConfig),

    _k("privacy", "cache_quota", SIZE, "256MB", "Sample cache disk cap; per kept class: samples_per_class, and twice as many held back (~150 KB each at 224x224 RGB).", ">= 1MB"),
    _k("privacy", "after_personalize", CHOICE, "keep", "What happens to cached samples after a successful run.", choices="keep|purge"),
    _k("privacy", "held_back_share", FLOAT, "0.2", "Share of distinct frames held back to judge candidates (by a hash of their pixels).", "(0, 0.9]"),

    _k("store", "keep_versions", INT, "5", "Personalized model versions kept on disk (the base model is always kept).", ">= 1"),

    _k("metrics", "textfile", OPTPATH, "", "Metrics file for node_exporter's textfile collector (a .prom file in a directory ocapd may write); empty: off."),
    _k("metrics", "interval", DURATION, "15s", "How often the metrics textfile is written.", ">= 1s"),
) + _source_schema()


def section_keys(section: str) -> Dict[str, Key]:
    """The schema's keys of one plain section, by name, in schema order."""
    return {k.name: k for k in SCHEMA if k.section == section}


def source_keys(source_type: str) -> Dict[str, Key]:
    """The keys a source of ``source_type`` takes (``type`` first), by name."""
    return {k.name: k for k in SCHEMA if k.section == "source" and (not k.types or source_type in k.types)}


SECTIONS: Tuple[str, ...] = tuple(dict.fromkeys(k.section for k in SCHEMA if k.section != "source"))


# ---- the result ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DaemonConfig:
    """``[daemon]``: where the daemon keeps its files and who may control it."""

    state_dir: Path
    cache_dir: Path
    socket: Path
    group: Optional[int]        # gid allowed to run mutating commands; None: root and the daemon's user only
    log_level: str
    max_connections: int
    max_payload: int


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the base model and how it is served."""

    base: str
    providers: Tuple[str, ...]      # (): auto, resolved where the daemon starts (ocap_core.runtime.resolve_providers)
    tensorrt_fp16: bool
    threads: int


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: the class log (durations in seconds)."""

    flush_interval: float
    retention: float
    low_confidence: float


@dataclass(frozen=True)
class PersonalizeConfig:
    """``[personalize]``: the personalization run and when it may start (seconds, bytes)."""

    enabled: bool
    scorer: str
    rule: str
    max_loss: float
    samples_per_class: int
    min_samples_per_class: int
    epochs: int
    time_budget: float          # seconds of work (ocap_core/work_clock.py)
    wall_limit: float           # wall seconds
    cooldown: float
    daily_cap: int
    threads: int                # 0: auto (one per idle core at the worker's start); else a cap
    nice: int
    max_temperature: float
    min_free_memory: int
    max_serving_p99: float
    quantize: str               # off | int8 (ocap_daemon/precision.py decides which one the gate judges)
    cascade: bool               # the search may choose a specialist with the base as its fallback


@dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]``: how much user data is cached and for how long (bytes)."""

    cache_quota: int
    after_personalize: str
    held_back_share: float      # of distinct frames, held back for judging (ocap_service.sample_cache)


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: the on-disk model store."""

    keep_versions: int


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the textfile for node_exporter (None: off) and how often it is written (seconds)."""

    textfile: Optional[Path]
    interval: float


@dataclass(frozen=True)
class SourceConfig:
    """A ``[source:NAME]`` section: its name, type and converted options (every key of the type, defaults
    filled in; directory: ``done_dir`` None means delete, ``reject_dir`` is always a path)."""

    name: str
    type: str
    options: Dict[str, Any]


_SECTION_CLASSES = {"daemon": DaemonConfig, "model": ModelConfig, "log": LogConfig, "stability": StabilityConfig,
                    "personalize": PersonalizeConfig, "gate": GateConfig, "drift": DriftConfig,
                    "probation": ProbationConfig, "privacy": PrivacyConfig, "store": StoreConfig,
                    "metrics": MetricsConfig}


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; one attribute per section, plus ``sources`` and ``path``."""

    daemon: DaemonConfig
    model: ModelConfig
    log: LogConfig
    stability: StabilityConfig
    personalize: PersonalizeConfig
    gate: GateConfig
    drift: DriftConfig
    probation: ProbationConfig
    privacy: PrivacyConfig
    store: StoreConfig
    metrics: MetricsConfig
    sources: Dict[str, SourceConfig]
    path: Optional[Path] = None

    @classmethod
    def defaults(cls) -> "Config":
        """Every key at its default and no sources, without reading a file or opening the base model."""
        return _build({}, "<defaults>", None)


# ---- loading -------------------------------------------------------------------------------------------

def _one_line(text: object) -> str:
    return " ".join(str(text).splitlines())


def _bad(where: str, value: str, key: Key, reason: str = "") -> ConfigError:
    return ConfigError(_one_line(f"{where} = {value!r}: {reason + '; ' if reason else ''}expected {key.expected()}"))


def _convert(key: Key, value: str, where: str) -> Any:
    try:
        return key.convert(value)
    except ValueError as e:
        raise _bad(where, value, key, e.args[0] if e.args else "") from None


def _section_at(text: str, lineno: int) -> str:
    """The section header in effect at 1-based ``lineno``, for syntax-error messages."""
    for line in reversed(text.splitlines()[:max(lineno - 1, 0)]):
        m = re.match(r"\s*\[(.+)\]", line)
        if m:
            return f"[{m.group(1)}] "
    return ""


def _read_ini(text: str, name: str) -> Dict[str, Dict[str, str]]:
    """INI text -> {section: {key: raw value}} in file order; syntax errors become ConfigError."""
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",),
                                       comment_prefixes=("#", ";"), inline_comment_prefixes=("#",),
                                       empty_lines_in_values=False, default_section=_NO_DEFAULT_SECTION)
    try:
        parser.read_string(text, source=name)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"{name}:{e.lineno}: [{e.section}] appears twice") from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(f"{name}:{e.lineno}: [{e.section}] {e.option}: set twice") from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(f"{name}:{e.lineno}: {e.line.strip()!r} comes before the first [section]") from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0]             # errors hold repr()s of the lines: quote the line itself
        lines = text.splitlines()
        line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        raise ConfigError(f"{name}:{lineno}: {_section_at(text, lineno)}cannot parse {line!r}: "
                          "expected 'key = value'") from None
    except configparser.Error as e:
        raise ConfigError(f"{name}: {_one_line(e)}") from None
    return {s: dict(parser.items(s)) for s in parser.sections()}


def _plain_section(section: str, raw: Dict[str, str], name: str) -> Any:
    keys = section_keys(section)
    problems = _Problems()
    for key, value in raw.items():
        if key not in keys:
            problems.add(f"{name}: [{section}] {key} = {value!r}: unknown key{nearest(key, list(keys))} "
                         f"([{section}] has {', '.join(keys)})")
    values = {k.name: problems.check(_convert, k, raw.get(k.name, k.default or ""), f"{name}: [{section}] {k.name}")
              for k in keys.values()}
    problems.raise_any()
    return _SECTION_CLASSES[section](**values)


def _source(section: str, raw: Dict[str, str], name: str, state_dir: Path) -> SourceConfig:
    src = section[len(SOURCE_PREFIX):]
    if not _SOURCE_NAME.fullmatch(src):
        raise ConfigError(f"{name}: [{section}]: bad source name {src!r}: expected letters, digits, '-' and '_'")
    type_key = source_keys("")["type"]
    if "type" not in raw:
        raise ConfigError(f"{name}: [{section}] type: missing; expected {type_key.expected()}")
    stype = _convert(type_key, raw["type"], f"{name}: [{section}] type")
    keys = source_keys(stype)
    for key, value in raw.items():
        if key in keys:
            continue
        users = sorted({t for k in SCHEMA if k.section == "source" and k.name == key for t in k.types})
        if users:
            raise ConfigError(f"{name}: [{section}] {key} = {value!r}: key {key!r} is not used by type {stype} "
                              f"(only by {', '.join(users)})")
        raise ConfigError(f"{name}: [{section}] {key} = {value!r}: unknown key "
                          f"(a {stype} source has {', '.join(keys)})")
    options: Dict[str, Any] = {}
    for k in keys.values():
        if k.name == "type":
            continue
        if k.name not in raw and k.default is None:
            raise ConfigError(f"{name}: [{section}] {k.name}: missing; a {stype} source needs {k.expected()}")
        options[k.name] = _convert(k, raw.get(k.name, k.default or ""), f"{name}: [{section}] {k.name}")
    try:
        options = SOURCES[stype].settle(options, state_dir)
    except OptionError as e:
        raise ConfigError(_one_line(f"{name}: [{section}] {e.key} = {raw.get(e.key, str(e.value))!r}: {e.why}")) from None
    return SourceConfig(src, stype, options)


def _build(raw: Dict[str, Dict[str, str]], name: str, path: Optional[Path]) -> Config:
    """Parsed sections -> Config: unknown sections and keys, types, ranges and cross-key rules."""
    problems = _Problems()
    for section in raw:
        if section not in SECTIONS and not section.startswith(SOURCE_PREFIX):
            problems.add(f"{name}: [{section}]: unknown section{nearest(section, list(SECTIONS))} (known: "
                         f"{', '.join(SECTIONS)}, {SOURCE_PREFIX}NAME)")
    parts = {s: problems.check(_plain_section, s, raw.get(s, {}), name) for s in SECTIONS}
    p = parts["personalize"]
    if p is not None and p.min_samples_per_class > p.samples_per_class:
        problems.add(f"{name}: [personalize] min_samples_per_class = {str(p.min_samples_per_class)!r}: "
                     f"expected at most samples_per_class ({p.samples_per_class})")
    if p is not None and p.wall_limit < p.time_budget:
        given = raw.get("personalize", {})
        limit, budget = (given.get(k, settings.default_text(DURATION, getattr(p, k))) for k in ("wall_limit", "time_budget"))
        problems.add(f"{name}: [personalize] wall_limit = {limit!r}: expected at least time_budget ({budget})")
    if p is not None and parts["gate"] is not None:
        parts["gate"] = parts["gate"].resolved(p.max_loss)          # auto: from the loss budget
    textfile = parts["metrics"].textfile if parts["metrics"] is not None else None
    if textfile is not None and not textfile.name.endswith(".prom"):
        problems.add(f"{name}: [metrics] textfile = {str(textfile)!r}: expected a file name ending in .prom "
                     "(node_exporter's textfile collector reads only those)")
    sources = {}
    if parts["daemon"] is not None:
        for section, items in raw.items():
            if section.startswith(SOURCE_PREFIX):
                s = problems.check(_source, section, items, name, parts["daemon"].state_dir)
                if s is not None:
                    sources[s.name] = s
    problems.raise_any()
    return Config(sources=sources, path=path, **parts)


def _check_base(cfg: Config, name: str) -> Card:
    """The base model must open (and verify) as a package: a typo fails here, not at the first request."""
    try:
        return open_package(cfg.model.base).card
    except (OcapError, OSError) as e:
        raise ConfigError(_one_line(f"{name}: [model] base = {cfg.model.base!r}: cannot open the model "
                                    f"package: {e}")) from None


def _check_textfile(cfg: Config, name: str) -> None:
    """The metrics textfile's directory must exist (whether ocapd may write there shows at its first write,
    which logs an error naming the file: under systemd that depends on the unit's sandbox)."""
    textfile = cfg.metrics.textfile
    if textfile is not None and not textfile.parent.is_dir():
        raise ConfigError(f"{name}: [metrics] textfile = {str(textfile)!r}: no directory {str(textfile.parent)!r}; "
                          "expected a file in an existing directory (node_exporter's --collector.textfile.directory)")


def load_config(path: Union[str, Path]) -> Config:
    """Read, validate and convert an INI file; its problems are one ``ConfigError``, a line each."""
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a configuration file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(_one_line(f"{name}: cannot read: {e.strerror or e}")) from None
    cfg = _build(_read_ini(text, name), name, path)
    problems = _Problems()
    problems.check(_check_base, cfg, name)  # what the sources read, and their fit to the model: ocap_daemon.sources
    problems.check(_check_textfile, cfg, name)
    problems.raise_any()
    log.debug("configuration %s: %d source(s)", name, len(cfg.sources))
    return cfg


# ---- the annotated example -----------------------------------------------------------------------------

_HEADER = """\
# /etc/ocap/ocap.ini: configuration of ocapd, the ocap on-device personalization daemon.
#
# This is the documented default: every key is listed with its meaning, type, allowed values and
# default, and is set to that default, so this file configures exactly what an empty file does.
# It is generated from the schema in ocap_daemon/config.py; regenerate the repository copy with
#   python -c 'import sys, ocap_daemon.config as c; sys.stdout.write(c.render_example())' > systemd/ocap.ini
#
# Syntax: [section] headers and "key = value" lines. Lines starting with # or ; are comments; " #" after
# a value starts a comment too (";" inside a value is part of it, as in a replay mix). A value fits on
# one line. Unknown sections and keys are errors, not warnings, and so is a key or section given twice.
# Key names are case-insensitive; section names and values are not.
#   Durations: {durations}.
#              Replay mixes read theirs the same way. Units are case-insensitive; "M" alone is refused.
#   Sizes:     100B, 64KiB, 512MB, 1GB: KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024;
#              a bare integer is bytes; units are case-insensitive.
#   Booleans:  yes/no, true/false, on/off, 1/0.
#   Paths:     absolute.
#
# Check a file without starting the daemon: ocapd --check-config --config FILE
# An invalid file makes ocapd exit with status 78 (EX_CONFIG), which the unit does not restart on.
#
# This file defines no input source: images come only from clients of the control socket.
# Commented examples of each source type are at the end.
"""


def _key_lines(key: Key, prefix: str = "") -> List[str]:
    default = key.default if key.default is not None else key.example
    shown = "required" if key.default is None else (f"default {key.default}" if key.default else "default empty")
    expected = key.expected(units=False)
    return [f"{prefix}# {key.help}", f"{prefix}# {expected[0].upper()}{expected[1:]}; {shown}.",
            f"{prefix}{key.name} = {default}".rstrip()]


def render_example() -> str:
    """The annotated example INI (``systemd/ocap.ini``): every section and key with its help, type, range
    and default, set to the default so it parses to ``Config.defaults()``; sources as commented examples."""
    out = [_HEADER.format(durations=DURATION_SYNTAX).rstrip("\n")]
    for section in SECTIONS:
        out += ["", f"[{section}]"]
        for i, key in enumerate(section_keys(section).values()):
            out += ([""] if i else []) + _key_lines(key)
    out += ["", "", f"# [{SOURCE_PREFIX}NAME] sections: any number of input sources; NAME is letters, digits, "
            "'-' and '_'.", "# Each needs a type; the other keys depend on the type. Uncomment one to use it:"]
    for stype, cls in SOURCES.items():
        out += ["#", f"# [{SOURCE_PREFIX}{stype}-example]", f"# # {summary(cls)}", f"# type = {stype}"]
        for key in source_keys(stype).values():
            if key.name != "type":
                out += _key_lines(key, "# ")
    return "\n".join(out) + "\n"

