"""service.sources: frames that do not fit the model are rejected as one event and a rate-limited log
line (issue 13: 32x32x3 images replayed into a 28x28x1 net logged 542 tracebacks in 11 s), data sets are
checked against the model card, and replay mixes against the model's classes."""

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import open_package
from service.class_log import ClassLog
from service.errors import ServiceError
from service.events import EventLog
from service.model_slot import load_model
from service.sources import DirectorySource, RejectedFrames, ReplaySource, data_misfit, parse_mix
from tests.helpers import ROOT


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
    return [r for r in caplog.records if r.name == "service.sources" and "rejected" in r.getMessage()]


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
    rejects = RejectedFrames("spool", events, interval=2.0)
    src = DirectorySource(spool, model.predict, tmp_path / "rejected", tmp_path / "done", rejects=rejects)
    caplog.set_level(logging.WARNING, logger="service.sources")
    assert src.scan() == 35
    assert src.frames == 5 and src.rejected == 30                           # serving went on for the good ones
    assert len(list((tmp_path / "rejected").iterdir())) == 30 and len(list((tmp_path / "done").iterdir())) == 5
    lines = _rejection_lines(caplog)
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]
    assert "bad00.npy: images of shape (1, 32, 32, 3) do not fit the model input 28x28" in lines[0].getMessage()
    for i in range(30, 40):                                                 # more within the interval
        _put(spool, f"bad{i:02d}.npy", wrong[i])
    src.scan()
    src.rejects.tick()
    assert len(_rejection_lines(caplog)) == 1                               # nothing more yet
    time.sleep(2.1)
    src.rejects.tick()                                                      # the source's loop does this
    lines = _rejection_lines(caplog)
    assert len(lines) == 2 and "39 frame(s) rejected" in lines[1].getMessage()       # all since the first line
    assert "(40 in all)" in lines[1].getMessage()
    rec = events.recent(kinds=["frames_rejected"])
    assert len(rec) == 1 and rec[0]["detail"]["source"] == "spool" and "(1, 32, 32, 3)" in rec[0]["detail"]["reason"]
    assert "Traceback" not in caplog.text


def test_replaying_images_that_do_not_fit_logs_no_traceback_per_frame(tmp_path, model, caplog):
    """The bug of issue 13, at the source: every frame failed and each logged a full traceback."""
    images = np.random.default_rng(1).integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    events = _events(tmp_path)
    caplog.set_level(logging.WARNING, logger="service.sources")
    src = ReplaySource(images, labels, lambda img: model.predict(img[None]), 400, parse_mix("0:1,5:1@1m", 10),
                       rejects=RejectedFrames("replay-test", events))
    src.start()
    time.sleep(1.0)
    src.stop()
    assert src.rejected == src.frames > 50
    lines = _rejection_lines(caplog)
    assert len(lines) == 1 and lines[0].exc_info is None and "Traceback" not in caplog.text
    assert len(events.recent(kinds=["frames_rejected"])) == 1


def test_an_unexpected_error_logs_its_traceback_once_per_interval(tmp_path, caplog):
    def sink(_):
        raise RuntimeError("the runtime broke")

    caplog.set_level(logging.WARNING, logger="service.sources")
    src = ReplaySource(np.zeros((4, 28, 28, 1), np.uint8), np.arange(4), sink, 500, parse_mix("0:1@1m", 10))
    src.start()
    time.sleep(0.5)
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


def test_python_m_service_refuses_replay_data_that_does_not_fit(tmp_path):
    np.savez(tmp_path / "cifar.npz", x=np.zeros((70, 32, 32, 3), np.uint8), y=np.arange(70) % 10)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "service", "--state-dir", str(tmp_path / "state"), "--socket",
                        str(tmp_path / "s.sock"), "--source", "replay", "--data", str(tmp_path / "cifar.npz")],
                       capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "cifar.npz: images are 32x32 (3 channels), the model fmnist-cnn takes 28x28 (1 channel)" in r.stderr
    assert "Traceback" not in r.stderr
