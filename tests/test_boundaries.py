"""The serving and control planes never import torch (a Jetson Nano shares 4 GB between CPU and GPU)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

TORCH_FREE_CORE = ["ocap_core", "ocap_core.errors", "ocap_core.data", "ocap_core.preprocess",
                   "ocap_core.package", "ocap_core.runtime", "ocap_core.evaluate", "ocap_core.cli"]


def _modules(package: str) -> list:
    return [package] + sorted(f"{package}.{p.stem}" for p in (ROOT / package).glob("*.py")
                              if p.stem not in ("__init__", "__main__", "worker"))


def _loaded_after_import(modules: list) -> dict:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_service_and_daemon_never_import_torch():
    mods = _modules("service") + _modules("daemon")
    assert len(mods) >= 4
    assert _loaded_after_import(mods) == []


def test_torch_free_core_modules_never_import_torch():
    assert _loaded_after_import(TORCH_FREE_CORE) == []


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_the_check_would_see_torch_if_it_were_imported():
    # the detector itself works: a torch module of ocap_core does load torch
    assert "torch" in _loaded_after_import(["ocap_core.zoo"])
