"""ocap_daemon.sources through real ``ocapd`` subprocesses (issue 13): at start and under ``--check-config``
every source's files exist and fit the base model (one line naming section, key and file, exit 78, nothing
touched), and a spool of wrong-sized images at run time is one event, not a traceback per frame."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_service.client import Client
from tests.helpers import ROOT, captured, wait_until
from tests.ocap_daemon.test_ocapd import _env, events, start, write_ini

WAIT_S = 120.0          # only a failing test waits this long: a loaded 2-core machine is slow, not stuck


def ocapd(ini: Path, *args: str) -> subprocess.CompletedProcess:
    return captured([sys.executable, "-m", "ocap_daemon.main", "--config", str(ini), *args],
                    cwd=str(ROOT), env=_env(), timeout=120)


def _npz(path: Path, shape, labels) -> Path:
    labels = np.asarray(labels)
    np.savez(path, x=np.random.default_rng(0).integers(0, 255, (len(labels), *shape), dtype=np.uint8), y=labels)
    return path


def _bad_setups(tmp: Path) -> dict:
    """name -> (extra ini sections, fragments the one line must hold)"""
    (tmp / "a-file").write_text("not a directory")
    (tmp / "spool").mkdir()
    ten = np.arange(70) % 10
    return {
        "missing-replay-file": ({"source:r": {"type": "replay", "data": str(tmp / "nope.npz")}},
                                ["[source:r] data", "nope.npz", "no such file or directory"]),
        "images-too-big": ({"source:r": {"type": "replay", "data": str(_npz(tmp / "c.npz", (32, 32, 3), ten))}},
                           ["[source:r] data", "c.npz", "[model] base = fmnist-cnn",
                            "images are 32x32 (3 channels), the model fmnist-cnn takes 28x28 (1 channel)"]),
        "labels-outside-the-model": (
            {"source:r": {"type": "replay", "data": str(_npz(tmp / "l.npz", (28, 28), np.arange(84) % 12))}},
            ["[source:r] data", "l.npz", "[model] base = fmnist-cnn", "labels 10, 11 are out of range 0..9 (the "
             "model's classes)"]),                        # the loader's message: it is given the model's classes
        "mix-class-not-in-data": (
            {"source:r": {"type": "replay", "data": str(_npz(tmp / "five.npz", (28, 28), np.arange(70) % 5)),
                          "mix": "0:1,7:1@1m"}},
            ["[source:r] mix", "'0:1,7:1@1m'", "five.npz", "no images of class(es) [7]"]),
        "mix-class-outside-the-model": (
            {"source:r": {"type": "replay", "mix": "0:1,10:1,12:1@1m"}},
            ["[source:r] mix", "class id(s) [10, 12] are not among the model's 10 classes 0..9"]),
        "missing-spool": ({"source:d": {"type": "directory", "spool": str(tmp / "nowhere")}},
                          ["[source:d] spool", "nowhere", "no such directory"]),
        "spool-is-a-file": ({"source:d": {"type": "directory", "spool": str(tmp / "a-file")}},
                            ["[source:d] spool", "a-file", "not a directory"]),
        "done-dir-is-a-file": ({"source:d": {"type": "directory", "spool": str(tmp / "spool"),
                                             "done_dir": str(tmp / "a-file")}},
                               ["[source:d] done_dir", "a-file", "not a directory"]),
    }


BAD = ["missing-replay-file", "images-too-big", "labels-outside-the-model", "mix-class-not-in-data",
       "mix-class-outside-the-model", "missing-spool", "spool-is-a-file", "done-dir-is-a-file"]


@pytest.mark.parametrize("case", BAD)
def test_check_config_said_valid_for_sources_that_cannot_start(tmp_path, case):
    sections, fragments = _bad_setups(tmp_path)[case]
    ini = write_ini(tmp_path, **sections)
    for args in (["--check-config"], []):                   # the same check at start: exit 78, nothing touched
        r = ocapd(ini, *args)
        line = r.stderr.strip()
        assert r.returncode == 78 and "\n" not in line and str(ini) in line, (r.returncode, r.stderr)
        assert all(f in line for f in fragments), line
        assert not (tmp_path / "state").exists()


def test_sources_that_fit_are_valid(tmp_path):
    (tmp_path / "spool").mkdir()
    rgb = _npz(tmp_path / "rgb.npz", (28, 28, 3), np.arange(70) % 10)     # converted to gray, as serving does
    ini = write_ini(tmp_path, **{"source:r": {"type": "replay", "data": str(rgb), "mix": "0:1,9:1@1m"},
                                 "source:f": {"type": "replay", "mix": "3:1@1m"},
                                 "source:d": {"type": "directory", "spool": str(tmp_path / "spool")}})
    r = ocapd(ini, "--check-config")
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr


def _folder(root: Path, classes, n: int = 2) -> Path:
    """An image folder: ``n`` 28x28 gray PNGs in a sub-folder per class name."""
    from PIL import Image

    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(str(root / name / f"{i}.png"))
    return root


def test_an_image_folder_replays_in_the_models_class_space(tmp_path):
    """Issue 13: the replay source loaded data without the model's class names, so folders Sneaker and
    Trouser became classes 0 and 1 (a mix of Fashion-MNIST's 1 and 7 found no class 7)."""
    data = tmp_path / "shoes"
    for part in ("train", "test"):
        _folder(data / part, ["Sneaker", "Trouser"])
    ini = write_ini(tmp_path, **{"source:r": {"type": "replay", "data": str(data), "mix": "1:1,7:1@1m"}})
    r = ocapd(ini, "--check-config")
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr
    _folder(tmp_path / "odd", ["Boots", "Trouser"])           # a folder that is neither a class name nor an id
    ini = write_ini(tmp_path, **{"source:r": {"type": "replay", "data": str(tmp_path / "odd"), "split": "all"}})
    r = ocapd(ini, "--check-config")
    line = r.stderr.strip()
    assert r.returncode == 78 and "\n" not in line and "[source:r] data" in line, r.stderr
    assert "class folders ['Boots'] are neither class names nor class ids of the model (10 classes" in line


def test_split_all_replays_a_data_set_too_small_for_a_test_split(tmp_path):
    """split = all was refused (train|test only): six images, one per class, have no test split."""
    six = str(_npz(tmp_path / "six.npz", (28, 28), np.arange(6)))
    r = ocapd(write_ini(tmp_path, **{"source:r": {"type": "replay", "data": six}}), "--check-config")
    line = r.stderr.strip()
    assert r.returncode == 78 and "\n" not in line and "[source:r] data" in line, r.stderr
    assert "too few images (6) for a test split" in line and "use split = all" in line, line
    r = ocapd(write_ini(tmp_path, **{"source:r": {"type": "replay", "data": six, "split": "all",
                                                   "mix": "0:1,5:1@1m"}}), "--check-config")
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr


def _stop(daemon) -> int:
    """SIGTERM, then the exit status (``start`` gives the process, or the launcher's handle that stops it)."""
    if hasattr(daemon, "stop"):
        return daemon.stop()
    daemon.send_signal(signal.SIGTERM)
    return daemon.wait(timeout=60)


def _put(spool: Path, name: str, image: np.ndarray) -> None:
    np.save(spool / f".{name}", image)                      # the source skips dot-files being written
    os.replace(str(spool / f".{name}"), str(spool / name))


def test_a_spool_of_wrong_sized_images_is_one_event_not_a_traceback_per_frame(tmp_path):
    """Issue 13: 32x32x3 images into a 28x28x1 net logged 542 tracebacks in 11 s."""
    spool, done, rejected = tmp_path / "spool", tmp_path / "done", tmp_path / "rejected"
    spool.mkdir()
    ini = write_ini(tmp_path, personalize={"enabled": "no"},
                    **{"source:in": {"type": "directory", "spool": str(spool), "done_dir": str(done),
                                     "reject_dir": str(rejected), "interval": "100ms"}})
    proc = start(tmp_path, ini)
    good = load_dataset("fashion-mnist", "test").x[:20]
    wrong = np.random.default_rng(0).integers(0, 255, (300, 32, 32, 3), dtype=np.uint8)
    try:
        for i in range(300):
            _put(spool, f"bad{i:03d}.npy", wrong[i])
            if i % 15 == 0:
                _put(spool, f"good{i // 15:02d}.npy", good[i // 15])
        wait_until(lambda: not any(spool.iterdir()), timeout=WAIT_S, interval=0.1, what="the spool to be empty")
        with Client(tmp_path / "s.sock") as c:
            c.predict(good[0])                              # the socket still serves
            status = c.call("status")
    finally:
        assert _stop(proc) == 0
    assert len(list(rejected.iterdir())) == 300 and len(list(done.iterdir())) == 20
    assert status["requests"] >= 21
    rejections = [d for k, d in events(tmp_path) if k == "frames_rejected"]
    assert len(rejections) == 1 and rejections[0]["source"] == "in", rejections
    assert "(1, 32, 32, 3) do not fit the model input 28x28" in rejections[0]["reason"]
    log = (tmp_path / "ocapd.log").read_text()
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if "rejected" in line]) == 1, log


@pytest.mark.torch
def test_a_mix_is_checked_against_the_models_own_classes(tmp_path):
    """MIX_CLASSES hard-coded 10 classes: a 12-class RGB model's class 11 was refused, and nothing
    said that Fashion-MNIST does not fit it."""
    from ocap_core.build import save_package
    from ocap_core.preprocess import InputSpec
    from ocap_core.zoo import create_model

    spec = InputSpec((3, 32, 32), 1 / 255, (0.5,), (0.5,))
    pkg = tmp_path / "rgb12"
    save_package(create_model("test_cnn", in_chans=3, num_classes=12).eval(), pkg, name="rgb12", input_spec=spec,
                 class_names=[f"c{k}" for k in range(12)], arch={"name": "test_cnn", "kwargs": {"in_chans": 3}})
    data = str(_npz(tmp_path / "d.npz", (32, 32, 3), np.arange(84) % 12))
    model = {"base": str(pkg)}
    r = ocapd(write_ini(tmp_path, model=model, **{"source:r": {"type": "replay", "data": data,
                                                                "mix": "0:1,11:2@1m"}}), "--check-config")
    assert r.returncode == 0, r.stderr
    r = ocapd(write_ini(tmp_path, model=model, **{"source:r": {"type": "replay", "data": data,
                                                                "mix": "0:1,12:1,13:1@1m"}}), "--check-config")
    assert r.returncode == 78 and "class id(s) [12, 13] are not among the model's 12 classes 0..11" in r.stderr
    r = ocapd(write_ini(tmp_path, model=model, **{"source:r": {"type": "replay"}}), "--check-config")
    assert r.returncode == 78 and "[source:r] data = 'fashion-mnist'" in r.stderr
    assert "images are 28x28 (1 channel), the model rgb12 takes 32x32 (3 channels)" in r.stderr


def test_a_replay_too_small_for_the_budget_is_said_at_the_start(tmp_path):
    """Issue 26: 1,500 images of three classes hold back about 300, and a 1-point budget is judged on
    300 of 600: ocapd says so under --check-config (still valid: it serves) with what would do, and the
    budget it suggests is enough."""
    test = load_dataset("fashion-mnist", "test")
    idx = np.concatenate([np.flatnonzero(test.y == k)[:500] for k in (0, 3, 7)])
    data = tmp_path / "small.npz"
    np.savez(data, x=test.x[idx, :, :, 0], y=test.y[idx])
    source = {"type": "replay", "data": str(data), "split": "all", "mix": "0:5,3:3,7:2@1m"}
    r = ocapd(write_ini(tmp_path, personalize={"max_loss": "1.0"}, **{"source:r": source}), "--check-config")
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr
    line = r.stderr.strip()
    assert line.startswith("ocapd: warning: [source:r] replays 1500 images of classes [0, 3, 7]") and "\n" not in line
    assert "about 300 would be held back" in line and "judged on 300 of 600 held back" in line, line
    assert "replay 3000 or more images" in line, line
    allowed = line.split("allow max_loss = ")[1].split()[0]
    r = ocapd(write_ini(tmp_path, personalize={"max_loss": allowed}, **{"source:r": source}), "--check-config")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
