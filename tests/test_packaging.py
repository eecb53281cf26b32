"""A non-editable install carries the shipped base models as package data."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import ROOT, SHIPPED


@pytest.mark.slow
def test_wheel_installs_the_shipped_models(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("ocap_core", "service", "daemon", "ocap_cli"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("ocap-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in SHIPPED:
        assert {f"ocap_core/pretrained/{model}/{f}" for f in ("card.json", "weights.pt", "model.onnx")} <= names
    assert any(n.endswith("entry_points.txt") for n in names)
    subprocess.run(pip + ["install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True)
    code = ("from ocap_core.package import open_package, shipped_models, PRETRAINED_DIR\n"
            "print(PRETRAINED_DIR)\n"
            "print(','.join(n for n in shipped_models() if open_package(n).card.name == n))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env={"PYTHONPATH": str(tmp_path / "site")},
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0].startswith(str(tmp_path / "site")) and out[1] == ",".join(SHIPPED)
