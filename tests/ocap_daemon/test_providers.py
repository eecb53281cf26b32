"""``[model] providers`` and ``tensorrt_fp16`` from the INI file to the serving plane: parsing and
validation, ``auto`` resolved where ocapd starts (against this machine's onnxruntime, which has only
the CPU), TensorRT's engine cache under ``[daemon] cache_dir``, and a fallback seen through a real
``ocapd``: its event, ``ocapctl status``, the gate loading a candidate with the server's settings, and
the demo report's column of providers."""

import numpy as np
import onnxruntime as ort
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import open_package, resolve_model
from ocap_daemon.config import ConfigError, load_config
from ocap_daemon.demo import providers_by_version
from ocap_daemon.demo_report import write_report
from ocap_daemon.gate import GateConfig, check
from ocap_daemon.main import server_config
from ocap_service.client import Client
from ocap_service.server import ServerConfig, build_server
from tests.ocap_daemon.test_ocapd import ctl, events, start, write_ini

CPU_ONLY = "CUDAExecutionProvider" not in ort.get_available_providers()


def _load(tmp_path, model_section: str):
    path = tmp_path / "ocap.ini"
    path.write_text(f"[daemon]\ncache_dir = {tmp_path}/cache\n[model]\n{model_section}", encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize("text, providers, fp16", [
    ("", (), True),                                        # the default: auto
    ("providers = auto\n", (), True),
    ("providers = tensorrt, cuda\ntensorrt_fp16 = no\n", ("tensorrt", "cuda"), False),
    ("providers = cpu\n", ("cpu",), True),
])
def test_providers_parse(tmp_path, text, providers, fp16):
    cfg = _load(tmp_path, text)
    assert cfg.model.providers == providers and cfg.model.tensorrt_fp16 is fp16


@pytest.mark.parametrize("text, fragments", [
    ("providers = auto, cpu\n", ["[model] providers = 'auto, cpu'", "auto or a comma-separated list of cpu, cuda"]),
    ("providers = Auto\n", ["[model] providers = 'Auto'"]),
    ("providers = gpu\n", ["[model] providers = 'gpu'", "cpu, cuda, tensorrt"]),
    ("providers = cuda, cuda\n", ["[model] providers = 'cuda, cuda'", "twice"]),
    ("tensorrt_fp16 = half\n", ["[model] tensorrt_fp16 = 'half'", "yes or no"]),
])
def test_bad_providers_name_the_key(tmp_path, text, fragments):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert all(f in str(e.value) for f in fragments), str(e.value)


@pytest.mark.parametrize("text, providers", [
    ("", ("cpu",) if CPU_ONLY else None),                  # auto, resolved against this onnxruntime
    ("providers = tensorrt, cuda\n", ("tensorrt", "cuda", "cpu")),   # cpu appended, the last resort
])
def test_the_daemon_resolves_providers_where_it_starts(tmp_path, text, providers):
    if providers is None:
        pytest.skip("this onnxruntime has GPU providers")
    scfg = server_config(_load(tmp_path, text))
    assert scfg.providers == providers
    assert scfg.trt_cache_dir == str(tmp_path / "cache" / "trt") and scfg.trt_fp16 is True


def test_the_gate_loads_a_candidate_with_the_servers_providers(tmp_path):
    """The candidate (here the shipped VGG, standing in for a pruned one) falls back like the served model,
    and the fallback is an event."""
    cfg = _load(tmp_path, "providers = cuda, cpu\n")
    server = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock", server_config(cfg))
    try:
        frames = load_dataset("fashion-mnist", "test").x[:40]
        vgg = open_package("fmnist-vgg").card.version
        v = check(str(resolve_model("fmnist-vgg")), server.served, server.base, frames, GateConfig(0.0, 1.0, 10),
                  **server.load_args())
        assert v.figures.get("version") == vgg, v.reason                 # loaded and judged, on the CPU
        fallbacks = [e["detail"]["model"] for e in server.recent_events(10, kinds=["provider_fallback"])]
        assert fallbacks == [vgg, open_package("fmnist-cnn").card.version]
    finally:
        server.stop()


@pytest.mark.skipif(not CPU_ONLY, reason="needs an onnxruntime without CUDA: there asking for it is a real fault")
def test_ocapd_serves_on_after_a_provider_fallback(tmp_path):
    ini = write_ini(tmp_path, model={"providers": "tensorrt, cuda"}, personalize={"enabled": "no"})
    d = start(tmp_path, ini)
    try:
        status = ctl(tmp_path, "status")
        model = status["model"]
        assert model["providers"] == ["cpu"] and model["asked"] == ["tensorrt", "cuda", "cpu"]
        assert "tensorrt: onnxruntime left it out" in model["fallback"] and "cuda: onnxruntime left it out" in model["fallback"]
        fallback = next(detail for kind, detail in events(tmp_path) if kind == "provider_fallback")
        assert fallback["got"] == ["cpu"] and fallback["model"] == model["version"]
        assert (tmp_path / "cache" / "trt").is_dir()        # TensorRT's engine cache, made for it at start
        test = load_dataset("fashion-mnist", "test")
        with Client(tmp_path / "s.sock") as c:                  # serving goes on, on the CPU
            answers = [c.predict(img)["class_id"] for img in test.x[:20]]
        assert np.mean(np.array(answers) == test.y[:20]) >= 0.8
    finally:
        assert d.stop() == 0


def test_the_demo_report_names_what_ocapd_ran_each_model_on(tmp_path):
    """The demo's table takes the providers from the daemon's own events (here a real server's)."""
    server = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock", ServerConfig(providers=("cuda", "cpu")))
    try:
        ok, reason = server.swap(str(resolve_model("fmnist-vgg")), why="test")
        assert ok, reason
        evs = list(reversed(server.recent_events(50)))                    # oldest first, as the demo reads them
    finally:
        server.stop()
    cnn, vgg = (open_package(n).card.version for n in ("fmnist-cnn", "fmnist-vgg"))
    assert providers_by_version(evs) == {cnn: ["cpu"], vgg: ["cpu"]}
    row = dict(model="base", version=cnn, classes=[0, 3, 7], accuracy=0.9, macs=21.9e6, latency_ms=0.2, size_mb=0.5,
               providers=providers_by_version(evs)[cnn])
    summary = dict(classes=[0, 3, 7], drift_class=9, requests=0, failed=0, served_by_daemon=0, models=[row])
    t0 = evs[0]["ts"]
    text = write_report(tmp_path / "report", summary, [], evs, t0, t0).read_text(encoding="utf-8")
    assert "| ocapd ran it on |" in text and f"| {cnn} | 3 | 90.00% | 21.90 M | 0.200 ms | 0.50 MB | cpu |" in text
