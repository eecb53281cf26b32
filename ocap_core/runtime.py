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
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import OcapError

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def provider_list(names: Sequence[str], trt_cache_dir: Optional[str] = None) -> List:
    """Short names (tensorrt, cuda, cpu) -> onnxruntime's provider list, in order."""
    out: List = []
    for n in names:
        if n not in PROVIDERS:
            raise OcapError(f"unknown execution provider {n!r}; choose from {', '.join(PROVIDERS)}")
        if n == "tensorrt" and trt_cache_dir:
            out.append((PROVIDERS[n], {"trt_engine_cache_enable": True, "trt_fp16_enable": True,
                                       "trt_engine_cache_path": trt_cache_dir}))
        else:
            out.append(PROVIDERS[n])
    return out


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
                 trt_cache_dir: Optional[str] = None):
    """An InferenceSession with fixed thread counts; errors name the file."""
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
        return ort.InferenceSession(str(path), so, providers=provider_list(providers, trt_cache_dir))
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise OcapError(f"onnxruntime cannot load {path}: {e}") from e


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
