"""INT8 packages from real shipped models, calibrated on real Fashion-MNIST images: the serving plane
opens them, their cards record the calibration, they agree with their FP32 parent, and every bad input
is refused with its reason and nothing half-written. Quantizing needs the ``onnx`` package, which comes
with the torch extra: those tests carry the ``torch`` marker (the Python 3.8 run has neither)."""

import dataclasses
import json
import shutil
import sys

import numpy as np
import onnxruntime
import pytest

from ocap_core.data import load_dataset
from ocap_core.errors import OcapError
from ocap_core.package import open_package, read_card, write_card
from ocap_core.quantize import QuantSpec, compare, cpu_flags, quantize_package, quantized_reason, quantizes
from ocap_service.model_slot import load_model
from tests.helpers import ROOT, captured, cli, run_cli, subprocess_env

onnx_tools = pytest.mark.torch          # onnxruntime's quantization tools import onnx (the torch extra)


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="module")
def cnn_int8(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("int8") / "cnn-int8"
    return quantize_package(open_package("fmnist-cnn"), data[0].x[:300], out, classes=range(10), source="train")


@onnx_tools
def test_the_int8_package_loads_in_the_serving_plane_and_its_card_records_the_calibration(cnn_int8, data):
    parent = open_package("fmnist-cnn")
    model = load_model(str(cnn_int8.path))
    pred = model.predict(data[1].x[:64])
    assert pred.features is not None and pred.features.shape == (64, parent.card.features_dim)
    card = model.card
    assert card.parent == parent.card.version and card.version.startswith("fmnist-cnn-int8-")
    assert card.version != parent.card.version and card.class_ids == parent.card.class_ids
    assert card.arch is None and list(card.files) == ["model.onnx"] and card.input == parent.card.input
    q = card.provenance["quantization"]
    assert q["calibration"] == {"frames": 200, "offered": 300, "seed": 0, "classes": list(range(10)), "source": "train"}
    assert q["parent"] == {"name": "fmnist-cnn", "version": parent.card.version,
                           "sha256": parent.card.files["model.onnx"]}
    assert q["onnxruntime"] == onnxruntime.__version__ and q["per_channel"] and q["weights"] == "int8"
    assert q["activations"] in ("uint8", "int8") and card.metrics["macs"] == parent.card.metrics["macs"]
    assert q["kept_fp32"] == ["/model/features/features.0/features.0.0/Conv"]          # the conv on the image
    assert card.metrics["size_reduction"] > 2.5 and card.metrics["onnx_bytes"] == cnn_int8.onnx_path.stat().st_size


@onnx_tools
def test_int8_agrees_with_its_fp32_parent_on_test_images(cnn_int8, data):
    res = compare(open_package("fmnist-cnn"), cnn_int8, data[1].subset(np.arange(2000)), latency_runs=0)
    assert res["images"] == 2000 and res["agreement"] >= 0.99 and abs(res["delta_pp"]) <= 1.0, res
    assert res["int8_accuracy"] >= 0.91 and res["size_ratio"] > 2.5 and "speedup" not in res


@onnx_tools
def test_quantizing_loads_no_torch(tmp_path):
    """The worker has torch anyway, but `ocap quantize` and a torch-free install do not need it: onnxruntime's
    symbolic shape inference (which imports sympy, which loads torch) stays off."""
    code = ("import sys, numpy as np; from ocap_core.package import open_package; "
            "from ocap_core.quantize import quantize_package, QuantSpec; "
            f"quantize_package(open_package('fmnist-cnn'), np.zeros((32, 28, 28), np.uint8), {str(tmp_path / 'q')!r}, "
            "QuantSpec(calibration=32)); print('torch' in sys.modules)")
    r = captured([sys.executable, "-c", code], cwd=str(ROOT),
                 env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "False"


@onnx_tools
@pytest.mark.parametrize("case,message", [
    ("few", "10 calibration frames: at least 32 are needed"),
    ("shape", "images of shape (40, 32, 32) do not fit the model input 28x28"),
    ("int8", "is already INT8: its card records a quantization"),
    ("graph", "is already INT8: its graph already has quantized operators (DequantizeLinear, QuantizeLinear)"),
    ("exists", "already exists; choose a new directory"),
])
def test_bad_inputs_are_refused_and_leave_nothing(cnn_int8, data, tmp_path, case, message):
    parent, frames, out = open_package("fmnist-cnn"), data[0].x[:40], tmp_path / "out" / "q"
    if case == "few":
        frames = frames[:10]
    elif case == "shape":
        frames = np.zeros((40, 32, 32), np.uint8)
    elif case == "int8":
        parent = cnn_int8
    elif case == "graph":                   # a quantized model whose card does not say so (imported, say)
        shutil.copytree(str(cnn_int8.path), str(tmp_path / "bare"))
        write_card(tmp_path / "bare", dataclasses.replace(read_card(tmp_path / "bare"), provenance={}))
        parent = open_package(str(tmp_path / "bare"))
    elif case == "exists":
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    with pytest.raises(OcapError) as e:
        quantize_package(parent, frames, out, QuantSpec(calibration=40))
    assert message in str(e.value)
    left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert left == (["q"] if case == "exists" else []), left
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_quant_spec_refuses_bad_settings():
    with pytest.raises(OcapError, match="20 asked, at least 32 needed"):
        QuantSpec(calibration=20)
    with pytest.raises(OcapError, match="activations 'int4'"):
        QuantSpec(activations="int4")


@pytest.mark.parametrize("machine,flags,acts,reduce_range", [
    ("x86_64", ["sse4_2", "avx2"], "uint8", True),              # no VNNI: 7-bit weights avoid overflow
    ("x86_64", ["avx2", "avx512_vnni"], "uint8", False),
    ("aarch64", ["asimd", "asimddp"], "int8", False),           # ARM CPUs and TensorRT: symmetric int8
])
def test_auto_settings_follow_the_machine(machine, flags, acts, reduce_range):
    spec = QuantSpec().resolved(flags, machine)
    assert (spec.activations, spec.reduce_range) == (acts, reduce_range)
    assert QuantSpec(activations="int8", reduce_range=False).resolved(flags, machine).activations == "int8"


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path):
    (tmp_path / "x86").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t: fpu\n")
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(str(tmp_path / "x86")) == ["fpu", "avx2", "avx512_vnni"]
    assert cpu_flags(str(tmp_path / "arm")) == ["fp", "asimd", "asimddp"]
    assert cpu_flags(str(tmp_path / "absent")) == []


def test_a_float_package_is_not_quantized():
    assert quantized_reason(open_package("fmnist-cnn")) is None


# ---------------------------------------------------------------- ocap quantize

@onnx_tools
def test_ocap_quantize_end_to_end_on_a_class_subset(tmp_path):
    out = tmp_path / "r20-18-int8"
    r = run_cli("quantize", "--model", "fmnist-resnet20", "--classes", "1,8", "--calibration", "64",
                "--latency-runs", "20", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["classes"] == [1, 8] and res["images"] == 2000 and res["calibration"]["frames"] == 64
    assert res["agreement"] >= 0.98 and res["int8_bytes"] < res["fp32_bytes"] / 2 and res["speedup"] > 0
    card = open_package(str(out)).card
    assert card.version == res["version"] and card.provenance["quantization"]["calibration"]["classes"] == [1, 8]
    assert card.metrics["test_agreement"] == res["agreement"] and card.metrics["int8_ms"] == res["int8_ms"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]        # no temporary directory left


@onnx_tools
@pytest.mark.parametrize("args,message", [
    (["--calibration", "8"], "--calibration 8: at least 32 images are needed"),
    (["--classes", "0,11"], "--classes: class 11 is out of range 0..9"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_ocap_quantize_errors_are_one_line_and_write_nothing(tmp_path, args, message):
    r = run_cli("quantize", "--model", "fmnist-cnn", "--out", str(tmp_path / "q"), *args)     # the last --model counts
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("ocap quantize: error: ")
    assert message in r.stderr and not any(tmp_path.iterdir())


@pytest.mark.skipif(quantizes(onnxruntime.__version__),
                    reason="this onnxruntime quantizes (the torch-marked tests above do it)")
def test_an_onnxruntime_without_quant_pre_process_is_refused_with_the_version_it_needs(tmp_path):
    """JetPack 4.6's onnxruntime 1.10/1.11 (the Python 3.6 run has 1.10): one line naming both versions,
    nothing written."""
    r = cli("quantize", "--model", "fmnist-cnn", "--calibration", "32", "--out", str(tmp_path / "q"))
    assert r.returncode == 1, r.stderr
    assert f"needs onnxruntime >= 1.12; this is onnxruntime {onnxruntime.__version__}" in r.stderr
    assert not any(tmp_path.iterdir())
