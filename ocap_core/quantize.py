"""INT8 copies of model packages: onnxruntime's static quantization (QDQ, weights per channel),
calibrated on frames preprocessed exactly as serving preprocesses them (``preprocess.preprocess`` with
the card's input spec), so the activation ranges are those the served model will see.

Torch-free: it needs ``onnxruntime`` and the ``onnx`` package (which onnxruntime's quantization tools
import; the ``torch`` extra installs it). Shape inference is ONNX's own: onnxruntime's symbolic one is
for transformers and imports sympy, which loads torch. The INT8 package is ONNX-only (no
``weights.pt``: it is served, never pruned or trained again); its card records how it was made
(``provenance.quantization``) and names its FP32 parent (``parent``, ``provenance.base_path``).
Packages are written aside and renamed into place, as every package is."""

import logging
import platform
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .data import Dataset
from .errors import OcapError
from .package import ONNX, Card, ModelPackage, file_sha256, open_package, write_card
from .preprocess import preprocess
from .runtime import _onnxruntime, open_session, paired_latency, run_batches

log = logging.getLogger(__name__)

METHOD = "onnxruntime static quantization, QDQ"
DEFAULT_CALIBRATION = 200        # frames (the measurement; more changes little for min-max ranges)
MIN_CALIBRATION = 32             # fewer: min-max ranges of a handful of frames clip the next ones
MIN_ORT = (1, 12)                # quant_pre_process (onnxruntime.quantization.shape_inference)
ACTIVATIONS = ("auto", "uint8", "int8")
# operators of an already quantized graph (QDQ, QOperator and dynamic forms)
QUANTIZED_OPS = frozenset(["QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                           "MatMulInteger", "DynamicQuantizeLinear", "QGemm"])
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize. ``calibration``: most frames used (a seeded choice among more); fewer than
    ``min_calibration`` is refused. ``activations``: ``uint8`` (asymmetric, onnxruntime's advice for
    x86 CPUs), ``int8`` (symmetric: ARM CPUs and TensorRT's explicit quantization) or ``auto`` (by the
    machine). ``reduce_range``: 7-bit weights, which avoid the overflow of x86's 8-bit multiply-add
    without VNNI (None: on exactly such a CPU). ``keep_first``: the convolutions that read the image
    stay FP32: with 1-3 input channels INT8 kernels gain nothing there (fmnist-cnn's first conv took 3.6x
    as long in INT8), and the rest of the model gains 0.1-0.3x more (docs/benchmarks.md, INT8)."""

    calibration: int = DEFAULT_CALIBRATION
    min_calibration: int = MIN_CALIBRATION
    per_channel: bool = True
    keep_first: bool = True
    activations: str = "auto"
    reduce_range: Optional[bool] = None
    batch: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise OcapError(f"activations {self.activations!r}: choose one of {', '.join(ACTIVATIONS)}")
        if self.min_calibration < 1 or self.calibration < self.min_calibration:
            raise OcapError(f"calibration frames: {self.calibration} asked, at least {self.min_calibration} needed")
        if self.batch < 1:
            raise OcapError(f"calibration batch {self.batch}: must be >= 1")

    def resolved(self, flags: Optional[Sequence[str]] = None, machine: Optional[str] = None) -> "QuantSpec":
        """``auto`` made concrete for this machine (or the given cpu ``flags`` and ``machine``)."""
        machine = (machine or platform.machine()).lower()
        x86 = machine in ("x86_64", "amd64", "i686", "i386")
        vnni = has_vnni(cpu_flags() if flags is None else flags)
        acts = self.activations if self.activations != "auto" else ("uint8" if x86 else "int8")
        rr = self.reduce_range if self.reduce_range is not None else (x86 and not vnni)
        return replace(self, activations=acts, reduce_range=bool(rr))


def cpu_flags(path: str = "/proc/cpuinfo") -> Sequence[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return value.split()
    except OSError:
        pass
    return []


def has_vnni(flags: Sequence[str]) -> bool:
    """Whether the x86 CPU multiplies 8-bit integers with VNNI (or AMX), where INT8 pays most."""
    return any(f in flags for f in VNNI_FLAGS)


def quantized_reason(pkg: ModelPackage) -> Optional[str]:
    """Why ``pkg`` is already quantized (its card says so, or its graph has quantized operators), else None."""
    if "quantization" in pkg.card.provenance:
        q = pkg.card.provenance["quantization"]
        return f"its card records a quantization ({q.get('method', '?')}, parent {pkg.card.parent})"
    try:
        import onnx

        ops = {n.op_type for n in onnx.load(str(pkg.onnx_path), load_external_data=False).graph.node}
    except ImportError:
        return None
    except Exception as e:  # onnx's own parse errors
        raise OcapError(f"cannot read {pkg.onnx_path}: {e}") from e
    found = sorted(ops & QUANTIZED_OPS)
    return f"its graph already has quantized operators ({', '.join(found)})" if found else None


class FrameReader:
    """onnxruntime's calibration data reader over preprocessed frames, ``batch`` at a time (the
    quantization tools take any object with ``get_next``)."""

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self.name, self.x, self.batch = name, x, batch
        self._i = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._i >= len(self.x):
            return None
        part = self.x[self._i:self._i + self.batch]
        self._i += self.batch
        return {self.name: part}

    def rewind(self) -> None:
        self._i = 0


def quantizes(onnxruntime_version: str) -> bool:
    """Whether an onnxruntime of this version can make INT8 models here (``MIN_ORT`` or later)."""
    return tuple(int(v) for v in onnxruntime_version.split(".")[:2] if v.isdigit()) >= MIN_ORT


def _tools():
    """onnxruntime's quantization module (telemetry off first, as for every session)."""
    ort = _onnxruntime()
    if not quantizes(ort.__version__):
        # 1.10/1.11 (JetPack 4.6's) have no quant_pre_process, whose shape inference the calibration needs
        raise OcapError(f"INT8 quantization needs onnxruntime >= {MIN_ORT[0]}.{MIN_ORT[1]}; this is onnxruntime "
                        f"{ort.__version__} (JetPack 4.6 has 1.10 or 1.11): serve the float model, or quantize "
                        f"where onnxruntime is newer and copy the package here")
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise OcapError(f"INT8 quantization needs onnxruntime's quantization tools and the onnx package "
                        f"(pip install 'ocap[torch]', or pip install onnx): {e}") from e
    return CalibrationMethod, QuantFormat, QuantType, quantize_static, quant_pre_process


def choose_frames(frames: np.ndarray, spec: QuantSpec, what: str = "calibration frames") -> np.ndarray:
    """At most ``spec.calibration`` of ``frames`` (a seeded choice, in their order); fewer than
    ``spec.min_calibration`` is an error naming how many there are."""
    n = len(frames)
    if n < spec.min_calibration:
        raise OcapError(f"{n} {what}: at least {spec.min_calibration} are needed for calibrated INT8 ranges")
    if n <= spec.calibration:
        return frames
    pick = np.sort(np.random.default_rng(spec.seed).choice(n, spec.calibration, replace=False))
    return frames[pick]


def quantize_package(parent: ModelPackage, frames: np.ndarray, out: Path, spec: QuantSpec = QuantSpec(),
                     classes: Optional[Sequence[int]] = None, name: Optional[str] = None,
                     source: str = "") -> ModelPackage:
    """An INT8 package at ``out`` made from ``parent`` and calibrated on ``frames`` (uint8 images as
    serving receives them; at most ``spec.calibration`` are used). ``classes`` and ``source`` say what the
    frames are, for the card. Refused: an ONNX-less or already quantized parent, too few frames, frames
    that do not fit the model, an ``out`` that exists with files in it."""
    out = Path(out)
    card = parent.card
    if not parent.has_onnx:
        raise OcapError(f"model package {parent.path} has no {ONNX} to quantize")
    if card.cascade is not None:
        raise OcapError(f"model package {parent.path} ({card.version}) is a cascade (a specialist with the base "
                        f"as its fallback): INT8 copies of cascades are not made; the FP32 cascade serves")
    why = quantized_reason(parent)
    if why:
        raise OcapError(f"model package {parent.path} ({card.version}) is already INT8: {why}")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise OcapError(f"output {out} already exists; choose a new directory")
    spec = spec.resolved()
    chosen = choose_frames(np.asarray(frames), spec)
    x = preprocess(chosen, card.input)
    calibration_method, quant_format, quant_type, quantize_static, quant_pre_process = _tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=str(out.parent)))
    try:
        tmp.chmod(0o755)
        pre = tmp / "pre.onnx"
        try:
            quant_pre_process(str(parent.onnx_path), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # onnx / onnxruntime raise their own types
            raise OcapError(f"cannot prepare {parent.onnx_path} for quantization: {type(e).__name__}: {e}") from e
        kept = _first_convs(pre) if spec.keep_first else []
        acts = quant_type.QUInt8 if spec.activations == "uint8" else quant_type.QInt8
        parent_session = open_session(parent.onnx_path)
        reader = FrameReader(parent_session.get_inputs()[0].name, x, spec.batch)
        try:
            quantize_static(str(pre), str(tmp / ONNX), reader, quant_format=quant_format.QDQ,
                            per_channel=spec.per_channel, reduce_range=bool(spec.reduce_range),
                            activation_type=acts, weight_type=quant_type.QInt8,
                            calibrate_method=calibration_method.MinMax, nodes_to_exclude=kept,
                            extra_options={"ActivationSymmetric": spec.activations == "int8"})
        except Exception as e:  # onnxruntime's quantizer raises anything from ValueError to its own types
            raise OcapError(f"onnxruntime could not quantize {parent.onnx_path}: {type(e).__name__}: {e}") from e
        pre.unlink()
        agreement = _agreement(parent_session, tmp / ONNX, x, card)
        child = _card(parent, tmp / ONNX, spec, len(chosen), len(frames), classes, name, source, agreement, kept)
        write_card(tmp, child)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote INT8 package %s (%s) from %s", out, child.version, card.version)
    return open_package(str(out))


def _first_convs(path: Path) -> List[str]:
    """Names of the Conv nodes that read the graph's input (the image)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def _agreement(parent_session, onnx_path: Path, x: np.ndarray, card: Card) -> float:
    """Top-1 agreement of the INT8 file with its parent on ``x``, after checking it has the parent's
    outputs and shapes."""
    want = list(card.outputs)
    ref = run_batches(parent_session, x, outputs=want)
    got = run_batches(open_session(onnx_path), x, outputs=want)
    for o in want:
        if got[o].shape != ref[o].shape:
            raise OcapError(f"the INT8 model's output {o!r} has shape {got[o].shape}, its parent's {ref[o].shape}")
    return float(np.mean(got["logits"].argmax(1) == ref["logits"].argmax(1)))


def _card(parent: ModelPackage, onnx_path: Path, spec: QuantSpec, used: int, offered: int,
          classes: Optional[Sequence[int]], name: Optional[str], source: str, agreement: float,
          kept: Sequence[str]) -> Card:
    card = parent.card
    import onnx  # present: the quantization tools imported it

    ort = _onnxruntime()
    digest = file_sha256(onnx_path)
    name = name or f"{card.name}-int8"
    size, parent_size = onnx_path.stat().st_size, parent.onnx_path.stat().st_size
    structural = ("macs", "params", "base_macs", "base_params", "mac_reduction", "param_reduction")
    metrics: Dict[str, Any] = {k: card.metrics[k] for k in structural if k in card.metrics}
    metrics.update(onnx_bytes=size, parent_onnx_bytes=parent_size, size_reduction=round(parent_size / size, 3),
                   calibration_agreement=round(agreement, 4))
    quant = {"method": METHOD, "weights": "int8", "activations": spec.activations, "per_channel": spec.per_channel,
             "reduce_range": spec.reduce_range, "calibrate_method": "minmax", "kept_fp32": list(kept),
             "calibration": {"frames": used, "offered": offered, "seed": spec.seed,
                             "classes": sorted(int(k) for k in classes) if classes is not None else None,
                             "source": source},
             "onnxruntime": ort.__version__, "onnx": onnx.__version__,
             "parent": {"name": card.name, "version": card.version, "sha256": card.files.get(ONNX)}}
    provenance = {"quantization": quant, "base": card.name, "base_path": str(Path(parent.path).resolve()),
                  "parent_provenance": card.provenance}
    return Card(name=name, version=f"{name}-{digest[:12]}", input=card.input, class_names=list(card.class_names),
                class_ids=list(card.class_ids), files={ONNX: digest}, outputs=list(card.outputs),
                features_dim=card.features_dim, arch=None, parent=card.version, metrics=metrics, provenance=provenance)


def record_metrics(pkg: ModelPackage, metrics: Dict[str, Any]) -> ModelPackage:
    """Merge measured ``metrics`` into a package's card (its files, and so their digests, are unchanged)."""
    pkg.card.metrics.update(metrics)
    write_card(pkg.path, pkg.card)
    return open_package(str(pkg.path))



def compare(parent: ModelPackage, child: ModelPackage, test: Dataset, classes: Optional[Sequence[int]] = None,
            threads: int = 1, latency_runs: int = 200) -> Dict[str, Any]:
    """FP32 ``parent`` against its INT8 ``child`` on the labelled images of ``classes`` (default: the
    parent's outputs): accuracy of each (argmax over the model's outputs), top-1 agreement, ONNX sizes
    and batch-1 latency at ``threads`` threads timed side by side (``paired_latency``; 0 runs: none)."""
    ids = np.asarray(parent.card.class_ids)
    cls = sorted(int(k) for k in (classes if classes is not None else parent.card.class_ids))
    data = test.of_classes(cls)
    if len(data) == 0:
        raise OcapError(f"data set {test.name!r} has no images of classes {cls}")
    x = preprocess(data.x, parent.card.input)
    sessions = [open_session(p.onnx_path, threads=threads) for p in (parent, child)]
    fp32, int8 = (run_batches(s, x)["logits"].argmax(1) for s in sessions)
    sizes = [p.onnx_path.stat().st_size for p in (parent, child)]
    out: Dict[str, Any] = {
        "classes": cls, "images": int(len(data)),
        "fp32_accuracy": float(np.mean(ids[fp32] == data.y)), "int8_accuracy": float(np.mean(ids[int8] == data.y)),
        "agreement": float(np.mean(fp32 == int8)), "fp32_bytes": sizes[0], "int8_bytes": sizes[1],
        "size_ratio": sizes[0] / sizes[1]}
    out["delta_pp"] = 100 * (out["int8_accuracy"] - out["fp32_accuracy"])
    if latency_runs:
        a, b = paired_latency(sessions, x, runs=latency_runs)
        out.update(fp32_ms=a, int8_ms=b, speedup=a / b, threads=threads)
    return out
