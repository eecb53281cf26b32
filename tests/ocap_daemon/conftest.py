"""Fixtures of the daemon's tests. ``pruned_1_8``: a real candidate the engine made from the shipped CNN
for {Trouser, Bag} (OCAP's rule, 3 epochs), checked in as an ONNX-only package (tests/data/fmnist-cnn-1-8,
made by scripts/make_test_candidate.py; test_test_data.py checks that the script still makes its
like), so that the control plane's tests run without torch: on Python 3.8 too."""

import shutil
from pathlib import Path

import pytest

CANDIDATE_1_8 = Path(__file__).resolve().parent.parent / "data" / "fmnist-cnn-1-8"


@pytest.fixture(scope="session")
def pruned_1_8(tmp_path_factory):
    """A copy of the checked-in candidate (a test may not change the original)."""
    out = tmp_path_factory.mktemp("pruned") / "cand"
    shutil.copytree(str(CANDIDATE_1_8), str(out))
    return out
