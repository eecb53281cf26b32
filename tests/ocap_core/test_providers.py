"""Execution providers in ``ocap_core.runtime`` (torch-free): the order they are asked in, what ``auto``
resolves to, TensorRT's options, and the retry down the list when a session cannot be made.

This machine's onnxruntime has only the CPU (``get_available_providers()`` lists Azure and CPU). Where a
test needs the list an ``onnxruntime-gpu`` build gives, it replaces ``get_available_providers`` with a
stand-in returning that list, and says so; no session is made with it."""

import onnxruntime as ort
import pytest

from ocap_core import runtime
from ocap_core.errors import OcapError
from ocap_core.package import open_package

# what onnxruntime-gpu 1.2x lists on a Jetson, in its own order (not ocap's)
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider", "AzureExecutionProvider"]


@pytest.fixture
def gpu_listing(monkeypatch):
    """A stand-in for onnxruntime-gpu's provider listing (this machine's build has no GPU providers)."""
    def listing(providers):
        monkeypatch.setattr(ort, "get_available_providers", lambda: list(providers))
    return listing


def test_auto_on_this_machine_is_the_cpu():
    assert "CUDAExecutionProvider" not in ort.get_available_providers(), "this test expects a CPU-only onnxruntime"
    assert runtime.available_providers() == ("cpu",)
    assert runtime.resolve_providers(()) == ("cpu",)


@pytest.mark.parametrize("listed, want", [
    (GPU_BUILD, ("tensorrt", "cuda", "cpu")),
    (list(reversed(GPU_BUILD)), ("tensorrt", "cuda", "cpu")),          # ocap's order, whatever the listing's
    (["CUDAExecutionProvider", "CPUExecutionProvider"], ("cuda", "cpu")),
    (["AzureExecutionProvider"], ("cpu",)),                              # the CPU is always there
])
def test_auto_takes_what_onnxruntime_offers_best_first(gpu_listing, listed, want):
    gpu_listing(listed)
    assert runtime.resolve_providers(()) == want


@pytest.mark.parametrize("names, want", [
    (("cpu",), ("cpu",)),
    (("cuda",), ("cuda", "cpu")),                       # cpu appended: the last resort of every fallback
    (("tensorrt", "cuda"), ("tensorrt", "cuda", "cpu")),
    (("cpu", "cuda"), ("cpu", "cuda")),                 # an explicit order is kept, even a strange one
])
def test_an_explicit_list_is_kept_in_order_with_the_cpu_last(names, want):
    assert runtime.resolve_providers(names) == want


@pytest.mark.parametrize("names, fragment", [(("cpu", "rocm"), "'rocm'"), (("cuda", "cuda"), "twice")])
def test_a_bad_list_is_an_error(names, fragment):
    with pytest.raises(OcapError, match=fragment):
        runtime.resolve_providers(names)


@pytest.mark.parametrize("cache, fp16, options", [
    ("/var/cache/ocap/trt", True, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                   "trt_engine_cache_path": "/var/cache/ocap/trt"}),
    (None, False, {"trt_fp16_enable": False}),
])
def test_tensorrt_gets_its_options(cache, fp16, options):
    assert runtime.provider_list(("tensorrt", "cuda", "cpu"), cache, fp16) == [
        ("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_options_do_not_stop_a_cpu_only_build(tmp_path):
    """The real onnxruntime here skips TensorRT with its options and makes the session on the CPU."""
    session, failed = runtime.open_session_with_fallback(open_package("fmnist-cnn").onnx_path,
                                                         providers=("tensorrt", "cpu"), trt_cache_dir=str(tmp_path))
    assert session.get_providers() == ["CPUExecutionProvider"] and failed == []


def test_a_bad_file_fails_on_every_provider_and_raises_the_last_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OcapError, match=f"cannot load {bad}"):
        runtime.open_session_with_fallback(bad, providers=("cuda", "cpu"))


def test_an_unknown_provider_is_an_error_not_a_fallback():
    with pytest.raises(OcapError, match="unknown execution provider 'rocm'"):
        runtime.open_session_with_fallback(open_package("fmnist-cnn").onnx_path, providers=("rocm", "cpu"))


def test_short_names_keep_names_ocap_does_not_know():
    assert runtime.short_names(["CUDAExecutionProvider", "AzureExecutionProvider"]) == ["cuda", "AzureExecutionProvider"]
