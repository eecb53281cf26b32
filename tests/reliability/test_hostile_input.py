"""Hostile files in the spool folder and the permissions of everything the daemon writes."""

import os
import stat

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_service.client import Client
from ocap_service.sources import DirectorySource
from tests.ocap_daemon.test_ocapd import start, write_ini


@pytest.fixture
def spool(tmp_path):
    from PIL import Image

    d = tmp_path / "spool"
    d.mkdir()
    x = load_dataset("fashion-mnist", "test").x
    secret = tmp_path / "secret.npy"
    np.save(secret, x[5])                                           # readable by the daemon, not in the spool
    os.symlink(str(secret), str(d / "link.npy"))
    os.mkfifo(str(d / "pipe.png"))                                  # reading it would block forever
    (d / "big.npy").write_bytes(b"\0" * (2 * 2 ** 20))
    Image.new("L", (5000, 5000)).save(d / "bomb.png")               # 25 M pixels, a small file
    Image.new("RGB", (32, 32)).save(d / "wrong-shape.png")
    (d / "sub").mkdir()
    np.save(d / "ok.npy", x[0])
    return d


def test_links_pipes_oversized_and_misshapen_files_are_rejected_unread(tmp_path, spool):
    from ocap_service.model_slot import load_model

    model = load_model("fmnist-cnn")
    seen = []

    def sink(batch):
        seen.append(batch)
        return model.predict(batch)

    src = DirectorySource(spool, sink, tmp_path / "rejected", max_bytes=2 ** 20)
    src.scan()
    assert len(seen) == 1 + 1 and src.frames == 1                   # ok.npy, and wrong-shape.png reached the model
    rejected = sorted(p.name for p in (tmp_path / "rejected").iterdir())
    assert rejected == ["big.npy", "bomb.png", "link.npy", "pipe.png", "wrong-shape.png"]
    assert os.path.islink(tmp_path / "rejected" / "link.npy")       # the link was moved, its target untouched
    assert (tmp_path / "secret.npy").exists()
    assert sorted(p.name for p in spool.iterdir()) == ["sub"]


def test_what_the_daemon_writes_is_not_world_readable(tmp_path):
    old = os.umask(0o022)                                           # a permissive caller
    try:
        daemon = start(tmp_path, write_ini(tmp_path, personalize={"enabled": "no"}))
    finally:
        os.umask(old)
    try:
        x = load_dataset("fashion-mnist", "test").x
        with Client(tmp_path / "s.sock") as c:
            for img in x[:50]:
                c.predict(img)
        assert stat.S_IMODE(os.stat(tmp_path / "s.sock").st_mode) == 0o660
    finally:
        assert daemon.stop() == 0
    for path in [tmp_path / "state", tmp_path / "cache", *(tmp_path / "state").rglob("*"),
                 *(tmp_path / "cache").rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o007 == 0, (path, oct(mode))                 # nothing for others
    npz = list((tmp_path / "cache").glob("*.npz"))
    assert npz and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in npz)
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
