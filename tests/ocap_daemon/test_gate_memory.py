"""The gate's memory (issue 15): judging a candidate on a thousand held-back frames neither peaks at
hundreds of MB nor leaves the daemon larger afterwards. Before the fix, one onnxruntime run over every
frame peaked at +235 MB and glibc kept +52 MB of it after the gate (fmnist-cnn, 1024 frames): ocapd grew
with every personalization. Measured in a fresh process, whose heap no other test has shaped. A
rejected candidate's session is released with its verdict, without the garbage collector."""

import gc
import platform
import sys
import weakref

import pytest

from ocap_core.data import load_dataset
from ocap_core.package import resolve_model
from ocap_daemon import gate
from ocap_service.model_slot import load_model
from tests.helpers import ROOT, captured, subprocess_env

JUDGE = """
import gc, resource
import psutil
from ocap_daemon.gate import GateConfig, check
from ocap_core.data import load_dataset
from ocap_core.package import resolve_model
from ocap_service.model_slot import load_model
x = load_dataset("fashion-mnist", "test").x[:1024]
base = load_model("fmnist-cnn")
base.predict(x[:2])
gc.collect()
p = psutil.Process()
before = p.memory_info().rss
high = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
verdict = check(str(resolve_model("fmnist-cnn")), base, base, x, GateConfig(0.0, 1.0, 10))
assert verdict.figures["samples"] == 1024, verdict.reason
del verdict
gc.collect()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print((p.memory_info().rss - before) / 2 ** 20, (peak - high) / 2 ** 20)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the heap figures are glibc's")
def test_judging_a_thousand_frames_neither_peaks_high_nor_stays():
    r = captured([sys.executable, "-c", JUDGE], cwd=str(ROOT),
                 env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    kept, peak = map(float, r.stdout.split())
    assert kept < 15 and peak < 120, f"RSS +{kept:.1f} MB after the gate, peak +{peak:.1f} MB during it"


def test_a_rejected_candidate_is_released_with_its_verdict(monkeypatch):
    base = load_model("fmnist-cnn")
    frames = load_dataset("fashion-mnist", "test").x[:60]
    sessions = []

    def recording_load(*args, **kwargs):
        m = load_model(*args, **kwargs)
        sessions.append(weakref.ref(m.session))
        return m

    monkeypatch.setattr(gate, "load_model", recording_load)
    gc.collect()
    gc.disable()
    try:
        v = gate.check(str(resolve_model("fmnist-vgg")), base, base, frames, gate.GateConfig(0.0, 50.0, 10))
        assert not v.passed and v.model is None and len(sessions) == 1, v.reason
        del v
        assert sessions[0]() is None
    finally:
        gc.enable()
