"""Provider fallback in the serving plane, on the shipped CNN and the real onnxruntime of this machine,
which has only the CPU: asking for ``cuda`` is a real fault there (onnxruntime skips the provider it
lacks and makes the session on the CPU, saying nothing), and the model, the ``provider_fallback`` event,
``status`` and ``ocapctl status`` must all say so while serving goes on.

A provider that raises when the session is made (TensorRT failing to load in onnxruntime-gpu) cannot be
caused on this machine: ``tensorrt_raises`` injects that failure into ``open_session`` (a fake, for that
fault only; every session still made is a real one)."""

import sys

import pytest

from ocap_core import runtime
from ocap_core.data import load_dataset
from ocap_core.errors import OcapError
from ocap_core.package import open_package
from ocap_service.client import Client
from ocap_service.model_slot import PREDICT_CHUNK, LoadedModel, load_model
from ocap_service.server import ServerConfig, build_server
from tests.helpers import ROOT, captured, subprocess_env

LEFT_OUT = "cuda: onnxruntime left it out"


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", "test").x[:64]


@pytest.fixture
def tensorrt_raises(monkeypatch):
    """``open_session`` failing for a list that starts with TensorRT, as onnxruntime-gpu does when
    libnvinfer is missing (a fake); the attempts are recorded."""
    real, attempts = runtime.open_session, []

    def open_session(path, threads=1, providers=("cpu",), trt_cache_dir=None, trt_fp16=True):
        attempts.append(tuple(providers))
        if providers[0] == "tensorrt":
            raise OcapError(f"onnxruntime cannot load {path}: libnvinfer.so.10: cannot open shared object file")
        return real(path, threads, providers, trt_cache_dir, trt_fp16)

    monkeypatch.setattr(runtime, "open_session", open_session)
    return attempts


def test_the_cpu_gets_what_it_asks_for():
    calls = []
    model = load_model("fmnist-cnn", providers=("cpu",), on_fallback=calls.append)
    assert model.providers == ("CPUExecutionProvider",) and model.asked == ("cpu",)
    assert model.fallback == "" and calls == []


def test_a_provider_onnxruntime_lacks_is_a_fallback_that_is_reported(images):
    calls = []
    model = load_model("fmnist-cnn", providers=("cuda", "cpu"), on_fallback=calls.append)
    assert model.providers == ("CPUExecutionProvider",) and model.asked == ("cuda", "cpu")
    assert model.fallback.startswith(LEFT_OUT)
    assert calls == [{"model": model.version, "asked": ["cuda", "cpu"], "got": ["cpu"], "error": model.fallback}]
    cpu = load_model("fmnist-cnn")
    assert model.predict(images).class_ids.tolist() == cpu.predict(images).class_ids.tolist()


def test_a_provider_that_fails_to_load_gives_way_to_the_next(tensorrt_raises, tmp_path, images):
    calls = []
    model = load_model("fmnist-cnn", providers=("tensorrt", "cuda", "cpu"), trt_cache_dir=str(tmp_path),
                       on_fallback=calls.append)
    assert tensorrt_raises == [("tensorrt", "cuda", "cpu"), ("cuda", "cpu")]
    assert model.providers == ("CPUExecutionProvider",)
    tensorrt, cuda = model.fallback.split("; ")
    assert tensorrt.startswith("tensorrt: onnxruntime cannot load") and "libnvinfer.so.10" in tensorrt
    assert cuda.startswith(LEFT_OUT)
    assert [c["got"] for c in calls] == [["cpu"]] and calls[0]["asked"] == ["tensorrt", "cuda", "cpu"]
    assert len(model.predict(images).class_ids) == len(images)


def test_an_unknown_provider_stops_the_load():
    with pytest.raises(OcapError, match="unknown execution provider 'rocm'"):
        load_model("fmnist-cnn", providers=("rocm", "cpu"))


def _ctl_status(sock) -> str:
    r = captured([sys.executable, "-m", "ocap_service.ctl", "--socket", str(sock), "status"],
                 cwd=str(ROOT), env=subprocess_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_server_records_each_fallback_and_shows_the_providers(tmp_path, images):
    sock = tmp_path / "ocap.sock"
    server = build_server("fmnist-cnn", tmp_path / "state", sock, ServerConfig(providers=("cuda", "cpu")))
    server.start()
    try:
        assert server.infer(images[:4]).class_ids.shape == (4,)          # serving goes on, on the CPU
        with Client(sock) as c:
            status = c.call("status")
        assert status["model"]["providers"] == ["cpu"] and status["model"]["asked"] == ["cuda", "cpu"]
        assert status["model"]["fallback"].startswith(LEFT_OUT)
        assert "providers cpu (asked for cuda, cpu: " + LEFT_OUT in _ctl_status(sock)

        ok, reason = server.swap(str(open_package("fmnist-vgg").path), why="test")
        assert ok, reason
        events = server.recent_events(20)
        fallbacks = [e["detail"] for e in events if e["kind"] == "provider_fallback"]
        versions = [open_package(n).card.version for n in ("fmnist-vgg", "fmnist-cnn")]
        assert [f["model"] for f in fallbacks] == versions                          # newest first
        assert all(f["asked"] == ["cuda", "cpu"] and f["got"] == ["cpu"] for f in fallbacks)
        swap = next(e["detail"] for e in events if e["kind"] == "swap")
        started = next(e["detail"] for e in events if e["kind"] == "serving_started")
        assert swap["providers"] == ["cpu"] and started["providers"] == ["cpu"]
        with Client(sock) as c:
            teacher = c.call("status")["teacher"]
        assert teacher["version"] == versions[1] and teacher["providers"] == ["cpu"]
        assert f"teacher   {versions[1]} on cpu checks" in _ctl_status(sock)
    finally:
        server.stop()


def test_no_fallback_no_event(tmp_path):
    server = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "ocap.sock", ServerConfig(providers=("cpu",)))
    try:
        assert not server.recent_events(20, kinds=["provider_fallback"])
        assert server.slot.describe()["fallback"] == "" and server.load_args()["providers"] == ("cpu",)
    finally:
        server.stop()


def test_the_warmup_runs_the_largest_batch_predict_makes(monkeypatch):
    """TensorRT builds an engine for the batch sizes it has seen: the load shows it batch 1 and
    PREDICT_CHUNK, so no later caller waits for a build (a spy on the real runs, counting their sizes)."""
    sizes, real = [], LoadedModel._run

    def spy(self, want, feed):
        sizes.append(len(next(iter(feed.values()))))
        return real(self, want, feed)

    monkeypatch.setattr(LoadedModel, "_run", spy)
    load_model("fmnist-cnn", warmup=2)
    assert sizes == [1, 1, PREDICT_CHUNK]


def test_each_version_gets_its_own_tensorrt_engine_directory(tmp_path, monkeypatch):
    """The daemon removes a version's engines once it cannot serve again (test_engine_cache.py), so each
    version's go in their own directory, made when TensorRT is asked for (it is skipped here)."""
    real, asked = runtime.open_session, []

    def open_session(path, threads=1, providers=("cpu",), trt_cache_dir=None, trt_fp16=True):
        asked.append(trt_cache_dir)
        return real(path, threads, providers, trt_cache_dir, trt_fp16)
    monkeypatch.setattr(runtime, "open_session", open_session)          # a spy: the real session is made
    root = tmp_path / "trt"
    model = load_model("fmnist-cnn", providers=("tensorrt", "cpu"), trt_cache_dir=str(root))
    assert asked == [str(root / model.version)] and (root / model.version).is_dir()
    load_model("fmnist-cnn", providers=("cpu",), trt_cache_dir=str(tmp_path / "unused"))
    assert asked[-1] is None and not (tmp_path / "unused").exists()
    (tmp_path / "file").write_bytes(b"")           # the cache cannot be made: the model loads without one
    assert load_model("fmnist-cnn", providers=("tensorrt", "cpu"), trt_cache_dir=str(tmp_path / "file")).version
    assert asked[-1] is None
