"""Shared fixtures. Test modules that declare ``pytestmark = pytest.mark.torch`` are not collected
where torch is not installed (the Python 3.8 torch-free run also deselects them with -m 'not torch')."""

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["tests.crash_report"]

# OpenMP threads that sleep when idle, as the daemon's worker runs (ocap_daemon/cores.py): set before torch
# loads, here and in every subprocess a test starts. Test workers share the cores, and torch's default
# threads spin 300,000 times before they sleep: three `ocap prune` runs at once on 2 cores took 49 s
# spinning, 16 s passive.
from ocap_daemon.cores import PASSIVE_OPENMP  # noqa: E402

for _var, _value in PASSIVE_OPENMP.items():
    os.environ.setdefault(_var, _value)

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def pytest_ignore_collect(collection_path, config):
    if HAVE_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    text = collection_path.read_text(encoding="utf-8")
    return True if re.search(r"^pytestmark = .*pytest\.mark\.torch", text, re.M) else None


DURATIONS = Path(__file__).resolve().parent / "durations.json"


def pytest_collection_modifyitems(config, items):
    """Longest tests first (tests/durations.json, written by scripts/test_durations.py), the rest in the
    order collected: with pytest-xdist's load scheduling, handing out a test or two at a time
    (scripts/test.sh), a long test starts early instead of holding one worker after the others finish."""
    try:
        seconds = json.loads(DURATIONS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-seconds.get(item.nodeid, 0.0), order[id(item)]))


@pytest.fixture
def package_copy(tmp_path):
    """A writable copy of the shipped small CNN package, for corrupting."""
    from ocap_core.package import resolve_model

    dst = tmp_path / "pkg"
    shutil.copytree(resolve_model("fmnist-cnn"), dst)
    return dst


@pytest.fixture
def tiny_switch_interval():
    """Make the interpreter switch threads every microsecond, so races between threads show up."""
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> str:
    """700 Fashion-MNIST training images per class as an .npz (its train split: 600 per class): the
    ``ocap prune`` runs that check what the CLI writes stream 6,000 images through the base to pick
    their samples, not 60,000 (built once per test session and worker)."""
    import numpy as np

    from ocap_core.data import load_dataset

    train = load_dataset("fashion-mnist", "train")
    idx = np.concatenate([np.flatnonzero(train.y == k)[:700] for k in range(10)])
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=train.x[idx, :, :, 0], y=train.y[idx])
    return str(path)
