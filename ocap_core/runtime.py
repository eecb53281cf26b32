"""onnxruntime sessions for model packages (numpy only): open, run in batches, time batch-1 latency.

No data leaves the device: official onnxruntime builds from 1.2x on Linux carry 1DS telemetry that
records a device id and process events under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` for
upload (found by tests/reliability/test_no_data_leaves.py). It is switched off here, before the
runtime initializes, with both environment variables its releases have read (``ORT_DISABLE_TELEMETRY``
in 1.32; ``ORT_TELEMETRY_DISABLED`` later), and through the Python API where that exists."""

import ctypes
import functools
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import OcapError

PROVIDERS = {                       # short name -> onnxruntime's, in ocap's order of preference
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAMES = {full: short for short, full in PROVIDERS.items()}


def available_providers() -> Tuple[str, ...]:
    """Short names of the providers the installed onnxruntime offers, best first; ``cpu`` always (every
    build has it). ``onnxruntime-gpu`` lists TensorRT and CUDA even where their libraries are missing:
    that they load is only known once a session is made (``open_session_with_fallback``)."""
    offered = set(_onnxruntime().get_available_providers())
    return tuple(n for n, full in PROVIDERS.items() if full in offered or n == "cpu")


def resolve_providers(names: Sequence[str]) -> Tuple[str, ...]:
    """The providers to ask for, in order. None given (``[model] providers = auto``): every provider the
    installed onnxruntime offers, best first (``available_providers``). A list: as given, with ``cpu``
    appended when it is missing, because it is the last resort every fallback ends on (onnxruntime adds
    the CPU to every session anyway). Names are checked; a provider this onnxruntime lacks is kept, so
    that serving without it is reported as a fallback, not hidden."""
    if not names:
        return available_providers()
    for n in names:
        if n not in PROVIDERS:
            raise OcapError(f"unknown execution provider {n!r}; choose from {', '.join(PROVIDERS)}")
    if len(set(names)) != len(names):
        raise OcapError(f"execution providers {', '.join(names)}: one is given twice")
    return tuple(names) + (() if "cpu" in names else ("cpu",))


def short_names(providers: Sequence[str]) -> List[str]:
    """onnxruntime's provider names -> ocap's short ones (a provider ocap has no name for keeps its own)."""
    return [SHORT_NAMES.get(p, p) for p in providers]


def provider_list(names: Sequence[str], trt_cache_dir: Optional[str] = None, trt_fp16: bool = True) -> List:
    """Short names (tensorrt, cuda, cpu) -> onnxruntime's provider list, in order. TensorRT gets its
    options: FP16 engines (``trt_fp16``), and an engine cache in ``trt_cache_dir`` when given (building
    an engine takes minutes on a Jetson; the cache makes a restart or a swap back take seconds)."""
    out: List = []
    for n in names:
        if n not in PROVIDERS:
            raise OcapError(f"unknown execution provider {n!r}; choose from {', '.join(PROVIDERS)}")
        if n == "tensorrt":
            options: Dict[str, Any] = {"trt_fp16_enable": bool(trt_fp16)}
            if trt_cache_dir:
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
            out.append((PROVIDERS[n], options))
        else:
            out.append(PROVIDERS[n])
    return out


def opset_hint(error: str, version: str) -> str:
    """What to do when onnxruntime refuses a model's opset (a package exported for a newer onnxruntime
    than JetPack 4.6's 1.10/1.11), appended to its error; "" for any other error."""
    if "opset" not in error.lower():
        return ""
    from .package import OPSET

    return (f" (this onnxruntime {version} loads older opsets than the file's: ocap exports opset {OPSET} today; "
            "export the package anew with scripts/reexport.py, or ocap import its model again)")


def _onnxruntime():
    """The onnxruntime module, with its telemetry off (set before its first session initializes it)."""
    for var in ("ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED"):
        os.environ[var] = "1"
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise OcapError("onnxruntime is not installed: pip install 'ocap[cpu]' (or 'ocap[gpu]')") from e
    try:
        ort.disable_telemetry_events()
    except AttributeError:  # builds without the API have no telemetry to switch off
        pass
    return ort


def open_session(path: Path, threads: int = 1, providers: Sequence[str] = ("cpu",),
                 trt_cache_dir: Optional[str] = None, trt_fp16: bool = True):
    """An InferenceSession with fixed thread counts; errors name the file.

    onnxruntime's own fallback at creation (a banner on stdout, a retry on the CPU) is switched off
    (``enable_fallback=0``: 1.32 reads it; 1.19 ignores it and falls back itself, which
    ``load_model`` then sees as a provider left out), so that a provider that fails to load raises
    with its reason and ``open_session_with_fallback`` tries the next one. It is switched back on for
    ``run``, where it moves a session whose provider fails mid-run to the CPU."""
    ort = _onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # the CPU arena keeps the peak of any batch for the session's life (+200 MB after one batch of 512
    # on the small CNN); without it batch-1 latency is the same (192 vs 195 us) and memory goes back
    so.enable_cpu_mem_arena = False
    try:
        session = ort.InferenceSession(str(path), so, providers=provider_list(providers, trt_cache_dir, trt_fp16),
                                       enable_fallback=0)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise OcapError(f"onnxruntime cannot load {path}: {e}{opset_hint(str(e), ort.__version__)}") from e
    try:
        session.enable_fallback()
    except (AttributeError, NotImplementedError):  # older builds: never switched off
        pass
    return session


def open_session_with_fallback(path: Path, threads: int = 1, providers: Sequence[str] = ("cpu",),
                               trt_cache_dir: Optional[str] = None,
                               trt_fp16: bool = True) -> Tuple[Any, List[str]]:
    """``open_session`` with ``providers``; when that raises (a provider that fails to load: a CUDA
    library missing, an engine TensorRT cannot build), again without the first provider, down to the
    last one alone. Returns the session and why each failed attempt failed ("tensorrt: ..."); when the
    last attempt fails too, its error is raised (then the file itself is bad, not a provider)."""
    provider_list(providers)                # unknown names: an error, not a fallback
    failed: List[str] = []
    for i in range(len(providers)):
        try:
            return open_session(path, threads, providers[i:], trt_cache_dir, trt_fp16), failed
        except OcapError as e:
            if i == len(providers) - 1:
                raise
            failed.append(f"{providers[i]}: {e}")
    raise OcapError(f"no execution provider to load {path} with")


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``): True when some went
    back; False too where the C library has no such call. glibc keeps what threads free in its heap for
    later allocations: after onnxruntime's transient tensors of a large batch (the gate's held-back
    frames) that kept up to ~50 MB resident per gate, never used again (docs/benchmarks.md, "Memory").
    It takes ~0.1 ms with nothing to give back, ~20 ms for 200 MB, and other threads' allocations wait
    meanwhile: call it from the control plane after large work, not on the request path."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def run_batches(session, x: np.ndarray, batch_size: int = 256,
                outputs: Sequence[str] = ("logits",)) -> Dict[str, np.ndarray]:
    """Run ``x`` (N x C x H x W float32) in batches; returns each requested output stacked."""
    inp = session.get_inputs()[0]
    want_shape = inp.shape[1:]
    if len(want_shape) != x.ndim - 1 or any(isinstance(d, int) and d != s for d, s in zip(want_shape, x.shape[1:])):
        raise OcapError(f"input of shape {tuple(x.shape[1:])} does not fit the model's {tuple(want_shape)}")
    names = [o.name for o in session.get_outputs()]
    missing = [o for o in outputs if o not in names]
    if missing:
        raise OcapError(f"the model has outputs {names}, not {missing}")
    parts: Dict[str, List[np.ndarray]] = {o: [] for o in outputs}
    for i in range(0, len(x), batch_size):
        res = session.run(list(outputs), {inp.name: x[i:i + batch_size]})
        for o, r in zip(outputs, res):
            parts[o].append(r)
    return {o: np.concatenate(v) if v else np.zeros((0,), np.float32) for o, v in parts.items()}


def measure_latency(session, sample: np.ndarray, warmup: int = 20, runs: int = 200) -> Dict[str, float]:
    """Batch-1 latency in ms (median, p90) over ``runs`` timed calls after ``warmup`` calls."""
    name = session.get_inputs()[0].name
    one = np.ascontiguousarray(sample[:1])
    for _ in range(warmup):
        session.run(None, {name: one})
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: one})
        times[i] = time.perf_counter() - t0
    return {"median_ms": float(np.median(times) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3)}


def paired_latency(sessions: Sequence[Any], x: np.ndarray, runs: int = 200, warmup: int = 20) -> List[float]:
    """Batch-1 median latency in ms of each session, timed call by call in turn on the first frame of
    ``x``, so that every session sees the same machine state (a loaded box drifts between blocks of runs)."""
    one = np.ascontiguousarray(x[:1])
    names = [s.get_inputs()[0].name for s in sessions]
    for _ in range(warmup):
        for s, n in zip(sessions, names):
            s.run(None, {n: one})
    times = np.empty((len(sessions), runs))
    for i in range(runs):
        for j, (s, n) in enumerate(zip(sessions, names)):
            t0 = time.perf_counter()
            s.run(None, {n: one})
            times[j, i] = time.perf_counter() - t0
    return [float(np.median(t) * 1e3) for t in times]
