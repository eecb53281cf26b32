"""ocap_service.sources: frames that do not fit the model are rejected as one event and a rate-limited log
line (issue 13: 32x32x3 images replayed into a 28x28x1 net logged 542 tracebacks in 11 s), data sets are
checked against the model card, and replay mixes against the model's classes; the source registry
(issue 14) is what ``python -m ocap_service``, ocapd's schema and the README's table are made from."""

import logging
import os
import re
import sys
import threading

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import open_package
from ocap_service.__main__ import build_parser
from ocap_service.class_log import ClassLog
from ocap_service.errors import ServiceError
from ocap_service.events import EventLog
from ocap_service.model_slot import load_model
from ocap_service.sources import (
    CHOICE,
    DURATION,
    FLOAT,
    MIX,
    OPTPATH,
    PATH,
    SOURCES,
    STR,
    DirectorySource,
    OptionError,
    RejectedFrames,
    ReplaySource,
    SourceContext,
    data_misfit,
    parse_mix,
    render_markdown,
    summary,
)
from tests.helpers import ROOT, captured

WAIT_S = 60.0           # only a failing test waits this long: a loaded 2-core machine is slow, not stuck


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="module")
def model():
    return load_model("fmnist-cnn")


def _events(tmp_path):
    ClassLog(tmp_path / "ocap.db").close()                  # makes the schema
    return EventLog(tmp_path / "ocap.db")


def _rejection_lines(caplog):
    return [r for r in caplog.records if r.name == "ocap_service.sources" and "rejected" in r.getMessage()]


def _put(spool, name, image):
    np.save(spool / f".{name}", image)                      # written aside, then renamed into the spool
    os.replace(str(spool / f".{name}"), str(spool / name))


def test_a_spool_of_wrong_sized_images_is_one_event_and_one_line_per_interval(tmp_path, fmnist, model, caplog):
    spool = tmp_path / "spool"
    spool.mkdir()
    wrong = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    for i in range(30):
        _put(spool, f"bad{i:02d}.npy", wrong[i])
    for i in range(5):
        _put(spool, f"good{i}.npy", fmnist.x[i])
    events = _events(tmp_path)
    now = [100.0]
    rejects = RejectedFrames("spool", events, interval=2.0, clock=lambda: now[0])
    src = DirectorySource(spool, model.predict, tmp_path / "rejected", tmp_path / "done", rejects=rejects)
    caplog.set_level(logging.WARNING, logger="ocap_service.sources")
    assert src.scan() == 35
    assert src.frames == 5 and src.rejected == 30                           # serving went on for the good ones
    assert len(list((tmp_path / "rejected").iterdir())) == 30 and len(list((tmp_path / "done").iterdir())) == 5
    lines = _rejection_lines(caplog)
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]
    assert "bad00.npy: images of shape (1, 32, 32, 3) do not fit the model input 28x28" in lines[0].getMessage()
    for i in range(30, 40):                                                 # more within the interval
        _put(spool, f"bad{i:02d}.npy", wrong[i])
    now[0] += 1.9
    src.scan()
    src.rejects.tick()
    assert len(_rejection_lines(caplog)) == 1                               # nothing more yet
    now[0] += 0.2
    src.rejects.tick()                                                      # the source's loop does this
    lines = _rejection_lines(caplog)
    assert len(lines) == 2 and "39 frame(s) rejected" in lines[1].getMessage()       # all since the first line
    assert "(40 in all)" in lines[1].getMessage()
    rec = events.recent(kinds=["frames_rejected"])
    assert len(rec) == 1 and rec[0]["detail"]["source"] == "spool" and "(1, 32, 32, 3)" in rec[0]["detail"]["reason"]
    assert "Traceback" not in caplog.text


class _counting:
    """A sink that passes each frame on and sets ``reached`` once ``n`` frames went through it (raising
    or not): what a test waits for instead of sleeping for a time."""

    def __init__(self, sink, n):
        self.sink, self.n, self.calls, self.reached = sink, n, 0, threading.Event()

    def __call__(self, image):
        self.calls += 1
        if self.calls >= self.n:
            self.reached.set()
        return self.sink(image)


def test_replaying_images_that_do_not_fit_logs_no_traceback_per_frame(tmp_path, model, caplog):
    """The bug of issue 13, at the source: every frame failed and each logged a full traceback."""
    images = np.random.default_rng(1).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    events = _events(tmp_path)
    caplog.set_level(logging.WARNING, logger="ocap_service.sources")
    src = ReplaySource(images, labels, _counting(lambda img: model.predict(img[None]), 60), 400,
                       parse_mix("0:1,5:1@1m", 10), rejects=RejectedFrames("replay-test", events))
    src.start()
    assert src.sink.reached.wait(WAIT_S), "the replay did not send 60 frames"
    src.stop()
    assert src.rejected == src.frames > 50
    lines = _rejection_lines(caplog)
    assert len(lines) == 1 and lines[0].exc_info is None and "Traceback" not in caplog.text
    assert len(events.recent(kinds=["frames_rejected"])) == 1


def test_an_unexpected_error_logs_its_traceback_once_per_interval(tmp_path, caplog):
    def sink(_):
        raise RuntimeError("the runtime broke")

    caplog.set_level(logging.WARNING, logger="ocap_service.sources")
    src = ReplaySource(np.zeros((4, 28, 28, 1), np.uint8), np.arange(4), _counting(sink, 30), 500,
                       parse_mix("0:1@1m", 10))
    src.start()
    assert src.sink.reached.wait(WAIT_S), "the replay did not send 30 frames"
    src.stop()
    lines = _rejection_lines(caplog)
    assert src.rejected > 20 and len(lines) == 1 and lines[0].exc_info is not None
    assert "the runtime broke" in lines[0].getMessage()


@pytest.mark.parametrize("shape, labels, fragment", [
    ((3, 28, 28, 1), [0, 1, 9], ""),
    ((3, 28, 28, 3), [0, 1, 2], ""),                               # RGB is converted to gray, as serving does
    ((3, 32, 32, 3), [0, 1, 2], "images are 32x32 (3 channels), the model fmnist-cnn takes 28x28 (1 channel)"),
    ((3, 28, 28, 1), [0, 10, 11], "labels [10, 11] are not among the model fmnist-cnn's 10 classes 0..9"),
    ((3, 28, 28, 1), [-1, 0, 1], "labels [-1]"),
])
def test_data_misfit_against_the_model_card(shape, labels, fragment):
    card = open_package("fmnist-cnn").card
    why = data_misfit(np.zeros(shape, np.uint8), np.asarray(labels), card)
    assert (fragment in why and why) if fragment else why == ""


def test_mix_class_ids_are_checked_against_the_given_class_count():
    assert [int(k) for k in parse_mix("11:1,0:1@1m", 12)[0][0]] == [11, 0]
    assert parse_mix("40:1@1m", None)[0][0].tolist() == [40]                # syntax only
    with pytest.raises(ServiceError, match=r"class id\(s\) \[12, 15\] are not among the model's 12 classes 0..11"):
        parse_mix("0:1,12:1,15:1@1m", 12)
    with pytest.raises(ServiceError, match=">= 0"):
        parse_mix("-1:1@1m", None)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_python_m_service_refuses_replay_data_that_does_not_fit(tmp_path):
    np.savez(tmp_path / "cifar.npz", x=np.zeros((70, 32, 32, 3), np.uint8), y=np.arange(70) % 10)
    r = captured([sys.executable, "-m", "ocap_service", "--state-dir", str(tmp_path / "state"), "--socket",
                  str(tmp_path / "s.sock"), "--source", "replay", "--data", str(tmp_path / "cifar.npz")],
                 cwd=str(ROOT), env=_env(), timeout=120)
    assert r.returncode == 1, r.stderr
    assert "cifar.npz: images are 32x32 (3 channels), the model fmnist-cnn takes 28x28 (1 channel)" in r.stderr
    assert "Traceback" not in r.stderr


# ---- the registry ----------------------------------------------------------------------------------------

KINDS = (STR, PATH, OPTPATH, FLOAT, DURATION, CHOICE, MIX)


def _ctx(model="fmnist-cnn"):
    return SourceContext(open_package(model, verify=False).card, f"--model {model}", lambda k, v: f"--{k} {v}")


def _defaults(cls, **given):
    """Every option of ``cls`` converted from ``given`` text or its default."""
    return {o.name: o.parse(given.get(o.name, o.default)) for o in cls.options}


@pytest.mark.parametrize("stype", list(SOURCES))
def test_each_source_type_declares_its_options_and_documents_them(stype):
    cls = SOURCES[stype]
    assert cls.name == stype and summary(cls).endswith(".") and len(summary(cls)) < 100
    names = [o.name for o in cls.options]
    assert names and len(set(names)) == len(names), names
    for o in cls.options:
        assert re.fullmatch(r"[a-z][a-z_]*", o.name) and o.kind in KINDS and 0 < len(o.help) < 120, o
        assert (o.kind == CHOICE) == bool(o.choices), o
        if o.default is None:
            assert o.example, f"{stype}: required option {o.name} needs an example for the docs"
        else:
            o.parse(o.default)                          # every default is a valid value
    assert "create" in vars(cls), f"{stype} cannot be built"


@pytest.mark.parametrize("stype", list(SOURCES))
def test_python_m_service_has_a_flag_for_every_option(stype):
    parser = build_parser()
    flags = {a for action in parser._actions for a in action.option_strings}
    assert stype in next(a.choices for a in parser._actions if "--source" in a.option_strings)
    for o in SOURCES[stype].options:
        assert o.cli_flag in flags, (stype, o.name)


def test_the_readme_table_of_sources_is_what_the_registry_renders():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render_markdown() in readme, "paste ocap_service.sources.render_markdown() into README.md"


@pytest.mark.parametrize("stype, option, text, fragment", [
    ("replay", "rate", "fast", "expected a number"),
    ("replay", "split", "every", "expected one of train, val, test, all"),
    ("directory", "interval", "10 sec", "unknown unit 'sec'"),
    ("directory", "interval", "10M", "write 'min'"),
])
def test_a_bad_option_text_is_an_option_error_naming_it(stype, option, text, fragment):
    o = next(o for o in SOURCES[stype].options if o.name == option)
    with pytest.raises(OptionError) as info:
        o.parse(text)
    assert (info.value.key, info.value.value) == (option, text) and fragment in info.value.why
    assert str(info.value).startswith(f"{option} = {text!r}: ") and "\n" not in str(info.value)


def test_directory_settle_defaults_the_reject_dir_and_keeps_both_off_the_spool(tmp_path):
    cls = SOURCES["directory"]
    got = cls.settle(_defaults(cls, spool=str(tmp_path)), tmp_path / "state")
    assert got["reject_dir"] == tmp_path / "state" / "rejected" and got["done_dir"] is None
    assert got["interval"] == 1.0
    for key in ("done_dir", "reject_dir"):
        with pytest.raises(OptionError, match=f"^{key} = .*must differ from spool"):
            cls.settle(_defaults(cls, spool=str(tmp_path), **{key: str(tmp_path)}), tmp_path / "state")


def _npz(path, shape, labels):
    np.savez(path, x=np.zeros((len(labels), *shape), np.uint8), y=np.asarray(labels))
    return str(path)


@pytest.mark.parametrize("case, given, key, fragment", [
    ("missing-data", {"data": "nope.npz"}, "data", "no such file or directory (a relative path, from"),
    ("too-big", {"data": "{big}"}, "data", "images are 32x32 (3 channels), the model fmnist-cnn takes 28x28 "
                                          "(1 channel) (--model fmnist-cnn)"),
    ("too-small-for-a-split", {"data": "{six}"}, "data", "use --split all"),
    ("mix-outside-the-model", {"mix": "0:1,12:1@1min"}, "mix", "class id(s) [12] are not among the model's 10"),
    ("mix-not-in-the-data", {"data": "{six}", "split": "all", "mix": "0:1,7:1@1min"}, "mix",
     "the all split of --data {six} has no images of class(es) [7]"),
])
def test_replay_check_names_the_option_that_does_not_fit(tmp_path, case, given, key, fragment):
    paths = {"big": _npz(tmp_path / "big.npz", (32, 32, 3), np.arange(70) % 10),
             "six": _npz(tmp_path / "six.npz", (28, 28, 1), np.arange(6))}
    cls = SOURCES["replay"]
    options = _defaults(cls, **{k: v.format(**paths) for k, v in given.items()})
    with pytest.raises(OptionError) as info:
        cls.check(cls.settle(options, tmp_path), _ctx())
    assert info.value.key == key and fragment.format(**paths) in info.value.why, info.value.why


def test_replay_check_loads_the_data_and_a_uniform_mix_by_default(tmp_path):
    cls = SOURCES["replay"]
    six = _npz(tmp_path / "six.npz", (28, 28, 1), np.arange(6))
    checked = cls.check(_defaults(cls, data=six, split="all"), _ctx())
    assert len(checked["dataset"]) == 6 and checked["rate"] == 20.0
    (ids, p, seconds), = checked["schedule"]
    assert ids.tolist() == list(range(6)) and np.allclose(p, 1 / 6) and seconds == 3600
    got = []
    sink = _counting(got.append, 5)
    src = cls.create(checked, _ctx(), sink, None)
    assert isinstance(src, ReplaySource)
    src.start()
    assert sink.reached.wait(WAIT_S), "no frames"
    src.stop()
    assert got[0].shape == (1, 28, 28, 1)                   # the sink takes batches, as server.infer does


@pytest.mark.parametrize("argv, fragment", [
    (["--source", "directory"], "--source directory needs --spool SPOOL"),
    (["--source", "camera", "--spool", "/x"], "--spool is not used by --source camera (only by directory)"),
    (["--rate", "5"], "--rate is not used by --source none (only by replay, camera)"),
    (["--source", "directory", "--spool", "{tmp}", "--interval", "10M"], "--interval 10M: bad duration '10M'"),
    (["--source", "directory", "--spool", "{tmp}/nowhere"], "--spool {tmp}/nowhere: no such directory"),
    (["--source", "directory", "--spool", "{tmp}", "--done-dir", "{tmp}"], "--done-dir {tmp}: must differ from"),
    (["--source", "replay", "--mix", "0:1@0s"], "--mix 0:1@0s: class mix segment '0:1@0s': its duration must be > 0"),
])
def test_python_m_service_names_the_flag_of_a_bad_source_option(tmp_path, argv, fragment):
    r = captured([sys.executable, "-m", "ocap_service", "--state-dir", str(tmp_path / "state"), "--socket",
                  str(tmp_path / "s.sock"), *[a.format(tmp=tmp_path) for a in argv]],
                 cwd=str(ROOT), env=_env(), timeout=120)
    line = r.stderr.strip().splitlines()[-1]               # after the server's log lines
    assert r.returncode == 1 and line.startswith("python -m ocap_service: ") and fragment.format(tmp=tmp_path) in line, \
        r.stderr
