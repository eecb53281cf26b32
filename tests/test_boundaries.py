"""The serving and control planes never import torch (a Jetson Nano shares 4 GB between CPU and GPU), and
the algorithms package never imports the control plane or the benchmarks (``ocap_cli`` composes the
``ocap`` command above all three)."""

import importlib.util
import json
import sys

import pytest

from tests.helpers import ROOT, captured

TORCH_FREE_CORE = ["ocap_core", "ocap_core.errors", "ocap_core.data", "ocap_core.preprocess",
                   "ocap_core.package", "ocap_core.runtime", "ocap_core.evaluate", "ocap_core.cli",
                   "ocap_core.quantize"]


def _modules(package: str) -> list:
    return [package] + sorted(f"{package}.{p.stem}" for p in (ROOT / package).glob("*.py")
                              if p.stem not in ("__init__", "__main__", "worker"))


def _loaded_after_import(modules: list, tops: tuple = ("torch",), then: str = "") -> list:
    """The modules of the top-level packages ``tops`` loaded in a fresh interpreter once ``modules`` are
    imported (and the statement ``then`` has run)."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"{then}\n"
            f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {tops!r})))")
    out = captured([sys.executable, "-c", code], cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_service_and_daemon_never_import_torch():
    mods = _modules("ocap_service") + _modules("ocap_daemon")
    assert len(mods) >= 4
    assert _loaded_after_import(mods) == []


def test_torch_free_core_modules_never_import_torch():
    assert _loaded_after_import(TORCH_FREE_CORE) == []


def test_the_algorithms_package_and_its_cli_load_neither_the_control_plane_nor_the_benchmarks():
    """Building ``python -m ocap_core``'s parser included; ``ocap demo`` and ``ocap bench`` are added by
    ``ocap_cli``, above the packages."""
    build = "import ocap_core.cli; ocap_core.cli.build_parser()"
    assert _loaded_after_import(TORCH_FREE_CORE, ("ocap_daemon", "bench", "ocap_cli"), then=build) == []


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_no_module_of_the_algorithms_package_loads_the_control_plane_or_the_benchmarks():
    assert _loaded_after_import(_modules("ocap_core"), ("ocap_daemon", "bench", "ocap_cli")) == []


def test_the_ocap_command_has_every_packages_commands_and_the_check_sees_them():
    """The detector works, and ``ocap_cli`` adds demo (the control plane) and bench (the benchmarks)."""
    loaded = _loaded_after_import(["ocap_cli"], ("ocap_daemon", "bench"), then="import ocap_cli; ocap_cli.build_parser()")
    assert "ocap_daemon.demo" in loaded and "bench.cli" in loaded


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_the_check_would_see_torch_if_it_were_imported():
    # the detector itself works: a torch module of ocap_core does load torch
    assert "torch" in _loaded_after_import(["ocap_core.zoo"])
