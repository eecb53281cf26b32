"""ocap_daemon.config: unit parsers, the generated example file, conversions, and one-line errors for bad files."""

import dataclasses
import grp
import os
import re
from pathlib import Path

import pytest

from ocap_daemon.config import (
    EXIT_CONFIG,
    SCHEMA,
    SECTIONS,
    Config,
    ConfigError,
    load_config,
    parse_size,
    render_example,
    section_keys,
    source_keys,
)
from ocap_daemon.errors import DaemonError
from ocap_service.sources import SOURCES, parse_mix
from tests.helpers import ROOT
from tests.ocap_service.test_durations import ACCEPTED

EXAMPLE = ROOT / "systemd" / "ocap.ini"
REGENERATE = ("python -c 'import sys, ocap_daemon.config as c; sys.stdout.write(c.render_example())' "
              "> systemd/ocap.ini")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ocap.ini"
    path.write_text(text, encoding="utf-8")
    return path


def _no_path(cfg: Config) -> Config:
    return dataclasses.replace(cfg, path=None)


# ---- units ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [(t, s) for t, s in ACCEPTED if s > 0])
def test_an_ini_duration_and_a_mix_duration_read_alike(tmp_path, text, seconds):
    """Issue 14: a mix took ``10m`` where an INI duration refused it; both use ``ocap_service.durations``
    (its own tests: tests/ocap_service/test_durations.py)."""
    path = _write(tmp_path, f"[stability]\nwindow = {text}\n[source:r]\ntype = replay\nmix = 0:1@{text}\n"
                            f"[source:d]\ntype = directory\nspool = /srv/spool\ninterval = {text}\n")
    cfg = load_config(path)
    mix = parse_mix(cfg.sources["r"].options["mix"], 10)
    assert cfg.stability.window == mix[0][2] == cfg.sources["d"].options["interval"] == pytest.approx(seconds)


@pytest.mark.parametrize("text, size", [
    ("512MB", 512_000_000), ("1GB", 1_000_000_000), ("64KiB", 65536), ("100B", 100), ("4096", 4096),
    ("1gib", 2 ** 30), ("1.5KiB", 1536), ("2 MiB", 2 * 2 ** 20), ("0", 0), ("1kb", 1000), ("1.1GB", 1_100_000_000),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5", "12M", "1K", "-1MB", "0.1KiB", "MB", "1 XB", "1e3", "1,024"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_size_unit_hint():
    with pytest.raises(ValueError, match="write MB or MiB"):
        parse_size("12M")


# ---- schema and the example file -------------------------------------------------------------------

def test_example_file_is_what_the_schema_renders():
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), f"regenerate it: {REGENERATE}"


def test_example_file_parses_to_the_defaults():
    cfg = load_config(EXAMPLE)
    assert cfg.path == EXAMPLE and cfg.sources == {}
    assert _no_path(cfg) == Config.defaults()


def test_every_schema_key_is_documented_in_the_example():
    text = EXAMPLE.read_text(encoding="utf-8")
    for section in SECTIONS:
        body = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        for key in section_keys(section).values():
            assert re.search(rf"^# {re.escape(key.help)}\n# .*\n{key.name} = ?{re.escape(key.default)}$", body, re.M), \
                (section, key.name)
    for stype in SOURCES:
        block = text.split(f"# [source:{stype}-example]\n", 1)[1].split("\n#\n", 1)[0]
        for key in source_keys(stype).values():
            assert re.search(rf"^# {key.name} =", block, re.M), (stype, key.name)


@pytest.mark.parametrize("stype", list(SOURCES))
def test_each_commented_source_example_works_when_uncommented(tmp_path, stype):
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text.split(f"# [source:{stype}-example]\n", 1)[1].split("\n#\n", 1)[0]
    section = f"[source:{stype}-example]\n" + "\n".join(line[2:] for line in block.splitlines()) + "\n"
    cfg = load_config(_write(tmp_path, text + section))
    src = cfg.sources[f"{stype}-example"]
    assert src.type == stype
    assert set(src.options) == set(source_keys(stype)) - {"type"}


def test_section_dataclasses_have_exactly_the_schema_keys():
    cfg = Config.defaults()
    for section in SECTIONS:
        assert [f.name for f in dataclasses.fields(getattr(cfg, section))] == list(section_keys(section))
    assert [f.name for f in dataclasses.fields(Config)] == list(SECTIONS) + ["sources", "path"]


def test_schema_declares_each_key_once_with_help():
    seen = set()
    for key in SCHEMA:
        ident = (key.section, key.name, key.types)
        assert ident not in seen and key.help and len(key.help) < 120, ident
        seen.add(ident)


def test_config_is_immutable_and_exit_code_is_ex_config():
    cfg = Config.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.stability.windows = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = None
    assert EXIT_CONFIG == 78 and issubclass(ConfigError, DaemonError)


def test_empty_file_is_the_defaults(tmp_path):
    path = _write(tmp_path, "# nothing set\n")
    cfg = load_config(path)
    assert cfg.path == path and _no_path(cfg) == Config.defaults()


# ---- a good file -------------------------------------------------------------------------------------

def test_good_file_converts_every_type(tmp_path, package_copy):
    group = grp.getgrgid(os.getgid())
    spool = tmp_path / "spool"
    text = f"""
; a full-line comment
[daemon]
state_dir = {tmp_path}/state
group = {group.gr_name}
log_level = debug

[model]
base = {package_copy}
providers = cuda, cpu   # falls back to the CPU
Threads = 4

[log]
flush_interval = 250ms
retention = 1d
low_confidence = 0.25

[stability]
window = 1.5h
windows = 2
coverage = 1
min_share = 0

[personalize]
enabled = off
scorer = ocap-freq
nice = 0
min_free_memory = 64KiB
max_serving_p99 = 0.02
max_temperature = 71.5
quantize = int8

[privacy]
cache_quota = 1GiB
after_personalize = purge

[source:demo]
type = replay
split = train
rate = 2.5
mix = 0:0.5,3:0.5@10m; 7:1@30s

[source:in_1]
type = directory
spool = {spool}
done_dir = {tmp_path}/done
interval = 100ms

[source:cam]
type = camera
device = /dev/video0
"""
    cfg = load_config(_write(tmp_path, text))
    d = Config.defaults()
    assert cfg.daemon.state_dir == tmp_path / "state" and isinstance(cfg.daemon.state_dir, Path)
    assert cfg.daemon.cache_dir == Path("/var/cache/ocap")
    assert cfg.daemon.group == group.gr_gid and cfg.daemon.log_level == "debug"
    assert cfg.model.base == str(package_copy) and cfg.model.providers == ("cuda", "cpu") and cfg.model.threads == 4
    assert cfg.log.flush_interval == pytest.approx(0.25) and cfg.log.retention == 86400.0
    assert cfg.log.low_confidence == 0.25
    assert cfg.stability.window == 5400.0 and cfg.stability.windows == 2
    assert cfg.stability.coverage == 1.0 and cfg.stability.min_share == 0.0
    assert cfg.stability.max_classes == d.stability.max_classes
    p = cfg.personalize
    assert p.enabled is False and p.scorer == "ocap-freq" and p.nice == 0 and p.min_free_memory == 65536
    assert p.max_serving_p99 == pytest.approx(0.02) and p.max_temperature == 71.5
    assert p.samples_per_class == 256 and p.time_budget == 1200.0 and p.cooldown == 3600.0 and p.wall_limit == 3600.0
    assert p.rule == "search" and p.max_loss == 1.0 and p.quantize == "int8" and d.personalize.quantize == "off"
    assert cfg.gate.min_agreement == pytest.approx(1 - 2 * p.max_loss / 100)     # auto: from the loss budget
    assert cfg.privacy.cache_quota == 2 ** 30 and cfg.privacy.after_personalize == "purge"
    assert cfg.gate == d.gate and cfg.drift == d.drift and cfg.probation == d.probation and cfg.store == d.store

    assert list(cfg.sources) == ["demo", "in_1", "cam"]
    demo = cfg.sources["demo"]
    assert (demo.name, demo.type) == ("demo", "replay")
    assert demo.options == {"data": "fashion-mnist", "split": "train", "rate": 2.5,
                            "mix": "0:0.5,3:0.5@10m; 7:1@30s"}
    spool_src = cfg.sources["in_1"]
    assert spool_src.options == {"spool": spool, "done_dir": tmp_path / "done",
                                 "reject_dir": tmp_path / "state" / "rejected", "interval": pytest.approx(0.1)}
    assert cfg.sources["cam"].options == {"device": "/dev/video0", "rate": 10.0}


@pytest.mark.parametrize("text, threads", [("", 0), ("threads = auto\n", 0), ("threads = 1\n", 1),
                                           ("threads = 4\n", 4)])
def test_worker_threads_are_auto_or_a_cap(tmp_path, text, threads):
    assert Config.defaults().personalize.threads == 0                   # auto: one per idle core
    assert load_config(_write(tmp_path, "[personalize]\n" + text)).personalize.threads == threads


def test_directory_source_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, "[source:s]\ntype = directory\nspool = /srv/spool\n"
                                       "reject_dir = /srv/rejected\n"))
    assert cfg.sources["s"].options == {"spool": Path("/srv/spool"), "done_dir": None,
                                        "reject_dir": Path("/srv/rejected"), "interval": 1.0}


# ---- bad files ---------------------------------------------------------------------------------------

SRC = "[source:a]\ntype = replay\n"
BAD = [
    # (id, file text, fragments the one-line message must contain besides the file name)
    ("syntax-error", "[stability]\nwindows = 3\nwindows 3\n", [":3:", "[stability]", "'windows 3'"]),
    ("colon-delimiter", "[stability]\nwindows: 3\n", [":2:", "[stability]", "windows: 3"]),
    ("key-before-section", "windows = 3\n", [":1:", "windows = 3", "[section]"]),
    ("duplicate-key", "[stability]\nwindows = 3\nwindows = 4\n", ["[stability] windows", "twice"]),
    ("duplicate-section", "[log]\n[store]\n[log]\n", ["[log]", "twice"]),
    ("duplicate-source", "[source:a]\ntype = camera\n[source:a]\n", ["[source:a]", "twice"]),
    ("unknown-section", "[sttability]\nwindows = 3\n", ["[sttability]", "unknown section"]),
    ("p99-in-minutes", "[personalize]\nmax_serving_p99 = 50m\n",
     ["[personalize] max_serving_p99", "'50m'", "in (0, 10s]"]),
    ("default-section", "[DEFAULT]\nthreads = 2\n", ["[DEFAULT]", "unknown section"]),
    ("unknown-key", "[stability]\nwindow_size = 5min\n", ["[stability] window_size", "'5min'", "unknown key"]),
    ("continuation-line", "[stability]\nwindows = 3\n  4\n", ["[stability] windows", "'3\\n4'", "one line"]),
    ("semicolon-is-not-inline-comment", "[stability]\nwindows = 3 ; three\n",
     ["[stability] windows", "'3 ; three'", "integer >= 2"]),
    ("key-of-other-source-type", SRC + "spool = /x\n", ["[source:a] spool", "'/x'", "not used by type replay"]),
    ("unknown-source-key", "[source:c]\ntype = camera\nfps = 5\n", ["[source:c] fps", "'5'", "unknown key"]),
    ("source-without-type", "[source:a]\nrate = 5\n", ["[source:a] type", "missing"]),
    ("bad-source-type", "[source:a]\ntype = usb\n", ["[source:a] type", "'usb'", "replay, directory, camera"]),
    ("bad-source-name", "[source:my cam]\ntype = camera\n", ["[source:my cam]", "'my cam'", "letters"]),
    ("empty-source-name", "[source:]\ntype = camera\n", ["[source:]", "''"]),
    ("directory-without-spool", "[source:d]\ntype = directory\n", ["[source:d] spool", "missing"]),
    ("relative-spool", "[source:d]\ntype = directory\nspool = spool\n", ["[source:d] spool", "'spool'", "absolute"]),
    ("done-dir-is-spool", "[source:d]\ntype = directory\nspool = /s\ndone_dir = /s\n",
     ["[source:d] done_dir", "'/s'", "differ"]),
    ("bad-interval", "[source:d]\ntype = directory\nspool = /s\ninterval = soon\n",
     ["[source:d] interval", "'soon'", "duration > 0"]),
    ("bad-int", "[stability]\nwindows = x\n", ["[stability] windows = 'x'", "expected an integer >= 2"]),
    ("float-for-int", "[gate]\nlatency_runs = 20.5\n", ["[gate] latency_runs", "'20.5'", ">= 10"]),
    ("bad-float", "[stability]\ncoverage = high\n", ["[stability] coverage", "'high'", "a number in (0, 1]"]),
    ("nan-float", "[log]\nlow_confidence = nan\n", ["[log] low_confidence", "'nan'", "[0, 1]"]),
    ("bad-bool", "[personalize]\nenabled = maybe\n", ["[personalize] enabled", "'maybe'", "yes or no"]),
    ("bad-choice", "[daemon]\nlog_level = verbose\n", ["[daemon] log_level", "'verbose'", "debug, info"]),
    ("choice-is-case-sensitive", "[personalize]\nscorer = OCAP\n", ["[personalize] scorer", "'OCAP'", "l1"]),
    ("quantize-unknown", "[personalize]\nquantize = int4\n", ["[personalize] quantize", "'int4'", "off, int8"]),
    ("relative-path", "[daemon]\nstate_dir = var/lib/ocap\n", ["[daemon] state_dir", "'var/lib/ocap'", "absolute"]),
    ("empty-path", "[daemon]\nsocket =\n", ["[daemon] socket", "''", "absolute path"]),
    ("unknown-provider", "[model]\nproviders = cpu, rocm\n", ["[model] providers", "'cpu, rocm'", "cuda, tensorrt"]),
    ("empty-providers", "[model]\nproviders =\n", ["[model] providers", "''", "comma-separated"]),
    ("duplicate-provider", "[model]\nproviders = cpu,cpu\n", ["[model] providers", "'cpu,cpu'", "twice"]),
    ("int-below-min", "[stability]\nwindows = 1\n", ["[stability] windows", "'1'", ">= 2"]),
    ("int-above-range", "[personalize]\nnice = 20\n", ["[personalize] nice", "'20'", "in 0..19"]),
    ("threads-zero", "[personalize]\nthreads = 0\n", ["[personalize] threads", "'0'", "auto or an integer >= 1"]),
    ("threads-word", "[personalize]\nthreads = all\n", ["[personalize] threads", "'all'", "auto or an integer"]),
    ("threads-auto-is-lowercase", "[personalize]\nthreads = Auto\n", ["[personalize] threads", "'Auto'", ">= 1"]),
    ("threads-float", "[personalize]\nthreads = 1.5\n", ["[personalize] threads", "'1.5'", "auto or an integer"]),
    ("int-below-range", "[personalize]\nnice = -1\n", ["[personalize] nice", "'-1'", "in 0..19"]),
    ("open-low-bound", "[stability]\ncoverage = 0\n", ["[stability] coverage", "'0'", "(0, 1]"]),
    ("open-high-bound", "[stability]\nmin_share = 1\n", ["[stability] min_share", "'1'", "[0, 1)"]),
    ("closed-high-bound", "[gate]\nmin_agreement = 1.5\n", ["[gate] min_agreement", "'1.5'", "[0, 1]"]),
    ("auto-float-word", "[gate]\nmin_agreement = most\n", ["[gate] min_agreement", "'most'", "auto or a number"]),
    ("max-loss-range", "[personalize]\nmax_loss = 101\n", ["[personalize] max_loss", "'101'", "[0, 100]"]),
    ("unknown-rule", "[personalize]\nrule = smallest\n", ["[personalize] rule", "'smallest'", "search, personalize"]),
    ("float-below-min", "[gate]\nmin_speedup = 0.9\n", ["[gate] min_speedup", "'0.9'", ">= 1.0"]),
    ("zero-duration", "[log]\nflush_interval = 0s\n", ["[log] flush_interval", "'0s'", "duration > 0"]),
    ("duration-unit-M", "[stability]\nwindow = 10M\n", ["[stability] window", "'10M'", "write 'min'"]),
    ("duration-unit-sec", "[stability]\nwindow = 10 sec\n", ["[stability] window", "unknown unit 'sec'"]),
    ("negative-duration", "[drift]\ncooldown = -5min\n", ["[drift] cooldown", "'-5min'", "duration >= 0"]),
    ("bad-duration", "[log]\nretention = forever\n", ["[log] retention", "'forever'", "30min"]),
    ("bad-size", "[privacy]\ncache_quota = lots\n", ["[privacy] cache_quota", "'lots'", "a size >= 1MB"]),
    ("size-unit-M", "[privacy]\ncache_quota = 256M\n", ["[privacy] cache_quota", "'256M'", "MB or MiB"]),
    ("size-below-min", "[privacy]\ncache_quota = 512KB\n", ["[privacy] cache_quota", "'512KB'", ">= 1MB"]),
    ("fractional-bytes", "[personalize]\nmin_free_memory = 1.5\n", ["[personalize] min_free_memory", "'1.5'"]),
    ("min-samples-above-samples", "[personalize]\nsamples_per_class = 32\n",
     ["[personalize] min_samples_per_class", "'64'", "samples_per_class (32)"]),
    ("wall-limit-below-budget", "[personalize]\nwall_limit = 2min\n",
     ["[personalize] wall_limit", "'2min'", "at least time_budget (20min)"]),
    ("budget-above-default-wall-limit", "[personalize]\ntime_budget = 2h\n",
     ["[personalize] wall_limit", "'1h'", "at least time_budget (2h)"]),
    ("unknown-group", "[daemon]\ngroup = no-such-group-ocap\n",
     ["[daemon] group", "'no-such-group-ocap'", "no such group"]),
    ("missing-base-model", "[model]\nbase = /nonexistent/ocap-model\n",
     ["[model] base", "'/nonexistent/ocap-model'", "unknown model"]),
    ("unknown-base-name", "[model]\nbase = fmnist-cnnn\n", ["[model] base", "'fmnist-cnnn'", "fmnist-cnn"]),
    ("corrupt-card", "[model]\nbase = {corrupt}\n", ["[model] base", "card.json", "not valid JSON"]),
    ("tampered-weights", "[model]\nbase = {tampered}\n", ["[model] base", "sha256"]),
    ("mix-syntax", SRC + "mix = 0:0.5,3:0.5\n", ["[source:a] mix", "'0:0.5,3:0.5'", "CLASS:SHARE"]),
    ("mix-zero-duration", SRC + "mix = 0:1@0s\n", ["[source:a] mix", "'0:1@0s'", "duration must be > 0"]),
    ("mix-duration-unit-M", SRC + "mix = 0:1@10M\n", ["[source:a] mix", "'0:1@10M'", "write 'min'"]),
    ("replay-rate-zero", SRC + "rate = 0\n", ["[source:a] rate", "'0'", "> 0"]),
    ("replay-split", SRC + "split = every\n", ["[source:a] split", "'every'", "train, val, test, all"]),
    ("camera-rate-negative", "[source:c]\ntype = camera\nrate = -1\n", ["[source:c] rate", "'-1'", "> 0"]),
]


@pytest.mark.parametrize("text, fragments", [pytest.param(t, f, id=i) for i, t, f in BAD])
def test_bad_config_is_one_line_naming_file_section_key_value(tmp_path, request, text, fragments):
    corrupt = tmp_path / "corrupt"
    tampered = Path("/unused")
    if "{corrupt}" in text:
        corrupt.mkdir()
        (corrupt / "card.json").write_text("{not json", encoding="utf-8")
    if "{tampered}" in text:
        tampered = request.getfixturevalue("package_copy")
        with open(tampered / "weights.pt", "r+b") as f:
            f.write(b"\0" * 16)
    path = _write(tmp_path, text.format(corrupt=corrupt, tampered=tampered))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_bad_matrix_is_large():
    assert len(BAD) >= 30 and len({i for i, _, _ in BAD}) == len(BAD)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.ini"
    with pytest.raises(ConfigError, match=r"absent\.ini: no such file$"):
        load_config(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory") as info:
        load_config(tmp_path)
    assert str(info.value).startswith(str(tmp_path))


def test_not_utf8(tmp_path):
    path = tmp_path / "ocap.ini"
    path.write_bytes(b"[daemon]\nlog_level = \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_defaults_do_not_touch_the_system(monkeypatch):
    # Config.defaults() neither reads a file nor opens the base model
    import ocap_daemon.config as config

    monkeypatch.setattr(config, "open_package", lambda *a, **k: pytest.fail("opened the base model"))
    assert Config.defaults().model.base == "fmnist-cnn"


def test_shipped_base_model_name_loads(tmp_path):
    cfg = load_config(_write(tmp_path, "[model]\nbase = fmnist-resnet20\n"))
    assert cfg.model.base == "fmnist-resnet20"


def test_every_problem_of_a_file_is_reported_at_once_with_the_nearest_key(tmp_path):
    """A bad value in [stability] hid a misspelt key in [personalize] until the first was fixed."""
    path = _write(tmp_path, "[stability]\nwindow = banana\n[personalize]\nmax_los = 2\nepochs = -1\n[gatee]\nx = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    lines = str(e.value).splitlines()
    assert len(lines) == 4, lines
    assert any("[stability] window = 'banana'" in x for x in lines)
    assert any("max_los = '2': unknown key; did you mean 'max_loss'?" in x for x in lines)
    assert any("[personalize] epochs" in x for x in lines)
    assert any("[gatee]: unknown section; did you mean 'gate'?" in x for x in lines)
    assert all(x.startswith(str(path)) for x in lines)


def test_the_held_back_share_reaches_the_sample_cache(tmp_path):
    from ocap_daemon.main import server_config

    cfg = load_config(_write(tmp_path, "[privacy]\nheld_back_share = 0.4\n"))
    assert cfg.privacy.held_back_share == 0.4 and server_config(cfg).cache_val_share == 0.4
    assert server_config(load_config(_write(tmp_path, ""))).cache_val_share == 0.2
