"""A non-editable install carries the shipped base models as package data, and installs only names of
its own: python-daemon's ``daemon`` (Debian's python3-daemon, on a Jetson's system Python too) and
ocap import side by side."""

import shutil
import sys
import zipfile

import pytest

from tests.helpers import ROOT, SHIPPED, captured, captured_bytes


@pytest.mark.slow
def test_wheel_installs_the_shipped_models(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("ocap_core", "ocap_service", "ocap_daemon", "ocap_cli"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    captured_bytes(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True)
    wheel = next((tmp_path / "dist").glob("ocap-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in SHIPPED:
        assert {f"ocap_core/pretrained/{model}/{f}" for f in ("card.json", "weights.pt", "model.onnx")} <= names
    assert any(n.endswith("entry_points.txt") for n in names)
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"ocap_core", "ocap_cli", "ocap_service", "ocap_daemon"}, top      # nothing named daemon, service
    captured_bytes(pip + ["install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True)
    code = ("from ocap_core.package import open_package, shipped_models, PRETRAINED_DIR\n"
            "print(PRETRAINED_DIR)\n"
            "print(','.join(n for n in shipped_models() if open_package(n).card.name == n))")
    out = captured([sys.executable, "-c", code],
                   cwd=str(tmp_path), env={"PYTHONPATH": str(tmp_path / "site")}, check=True).stdout.split("\n")
    assert out[0].startswith(str(tmp_path / "site")) and out[1] == ",".join(SHIPPED)
    # a stand-in of python-daemon's package (its import name and DaemonContext) beside the install
    other = tmp_path / "other" / "daemon"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("class DaemonContext:\n    pass\n")
    code = ("import daemon, ocap_daemon.main, ocap_service.ctl\n"
            "print(daemon.DaemonContext.__module__, ocap_daemon.main.__file__)")
    path = f"{tmp_path / 'site'}:{tmp_path / 'other'}"
    out = captured([sys.executable, "-c", code], cwd=str(tmp_path), env={"PYTHONPATH": path})
    assert out.returncode == 0, out.stderr
    module, main_file = out.stdout.split()
    assert module == "daemon" and main_file.startswith(str(tmp_path / "site" / "ocap_daemon"))
