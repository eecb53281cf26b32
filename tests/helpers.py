"""Helpers shared by tests (import as ``from tests.helpers import ...``)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["fmnist-cnn", "fmnist-mobilenetv2", "fmnist-resnet20", "fmnist-vgg"]
TARGETS = {"fmnist-cnn": 0.91, "fmnist-resnet20": 0.925, "fmnist-mobilenetv2": 0.92, "fmnist-vgg": 0.925}


def run_cli(*args: str, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``ocap ARGS`` (``python -m ocap_cli``) as a real subprocess from the repository root."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ocap_cli", *args], capture_output=True, text=True,
                          cwd=str(ROOT), env=full_env, timeout=timeout)
