"""Serving-plane benchmark (torch-free): what the inference path adds over a bare onnxruntime call,
what a hot swap costs and does to request latency, and what the class log costs, side by side in one
process on the shipped models."""

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ocap_core.data import load_dataset
from ocap_core.preprocess import preprocess
from service.class_log import ClassLog
from service.model_slot import ModelSlot, load_model
from service.server import Server

MODELS = ["fmnist-cnn", "fmnist-resnet20", "fmnist-mobilenetv2", "fmnist-vgg"]


def _pct(ms: List[float]) -> Dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def path_overhead(model: str, frames: np.ndarray, runs: int) -> Dict[str, Any]:
    """Batch-1 latency: bare session.run on preprocessed input vs Server.infer (preprocess, predict,
    class log, cache offer), same frames, same process, one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(model, Path(tmp), Path(tmp) / "s.sock")
        m = srv.slot.current()
        name = m.session.get_inputs()[0].name
        x = preprocess(frames[:runs], m.card.input)
        bare, full = [], []
        for i in range(runs):                               # interleaved: same machine state for both
            t0 = time.perf_counter()
            m.session.run(["logits"], {name: x[i:i + 1]})
            bare.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            srv.infer(frames[i:i + 1])
            full.append((time.perf_counter() - t0) * 1e3)
        srv.class_log.close()
        srv.cache.close()
    b, f = _pct(bare), _pct(full)
    return {"model": model, "bare_p50": b["p50"], "infer_p50": f["p50"], "infer_p99": f["p99"],
            "ratio": f["p50"] / b["p50"]}


def swap_cost(frames: np.ndarray, swaps: int = 4) -> Dict[str, Any]:
    """Swap time (verify + load + warm-up) and request latency of a client thread during swaps vs before."""
    slot = ModelSlot(load_model("fmnist-cnn"))
    lat: List[tuple] = []
    swapping = threading.Event()
    stop = threading.Event()
    errors = [0]

    def client():
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                slot.current().predict(frames[i % len(frames)])
            except Exception:
                errors[0] += 1
            lat.append((swapping.is_set(), (time.perf_counter() - t0) * 1e3))
            i += 1

    t = threading.Thread(target=client)
    t.start()
    time.sleep(1.0)
    secs = []
    for k in range(swaps):
        swapping.set()
        t0 = time.perf_counter()
        ok, reason = slot.swap("fmnist-vgg" if k % 2 == 0 else "fmnist-cnn")
        secs.append(time.perf_counter() - t0)
        swapping.clear()
        assert ok, reason
        time.sleep(0.5)
    stop.set()
    t.join()
    calm = [ms for s, ms in lat if not s]
    busy = [ms for s, ms in lat if s]
    return {"swap_s": statistics.median(secs), "requests": len(lat), "dropped": errors[0],
            "calm": _pct(calm), "during_swap": _pct(busy) if busy else {"p50": float("nan"), "p99": float("nan")}}


def class_log_cost(n: int = 100_000) -> Dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        log = ClassLog(Path(tmp) / "ocap.db", clock=lambda: 0.0)
        ids = np.random.default_rng(0).integers(0, 10, n)
        t0 = time.perf_counter()
        for i in range(n):
            log.add(ids[i:i + 1], (0.9,), "v1", ts=float(i // 50) * 60)      # 50 frames per minute row
        add_us = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        rows = log.flush()
        flush_ms = (time.perf_counter() - t0) * 1e3
        log.close()
    return {"add_us": add_us, "rows": rows, "flush_ms": flush_ms}


def run(quick: bool = False) -> Dict[str, Any]:
    frames = load_dataset("fashion-mnist", "test").x[:1000]
    runs = 100 if quick else 500
    models = MODELS[:1] if quick else MODELS
    return {"paths": [path_overhead(m, frames, runs) for m in models], "swap": swap_cost(frames, 2 if quick else 4),
            "class_log": class_log_cost(20_000 if quick else 100_000), "runs": runs}


def markdown(res: Dict[str, Any], machine: str, versions: Dict[str, str]) -> str:
    lines = ["## Serving plane (`ocap bench serving`)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}. "
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
             f"Batch-1 latency over {res['runs']} Fashion-MNIST test frames, onnxruntime CPU, 1 thread; *bare* is "
             "`session.run` on a preprocessed frame, *infer* is the whole serving path (preprocess, predict, "
             "map to base ids, class log, queueing the frame for the sample cache, whose KL scoring and file "
             "write (~1 ms, 5x the bare call when it was inline) run on their own thread, not timed here), "
             "interleaved in one process.", "",
             "| model | bare p50 ms | infer p50 ms | infer p99 ms | infer ÷ bare |", "|---|---|---|---|---|"]
    lines += [f"| {p['model']} | {p['bare_p50']:.3f} | {p['infer_p50']:.3f} | {p['infer_p99']:.3f} | "
              f"{p['ratio']:.2f} |" for p in res["paths"]]
    s = res["swap"]
    lines += ["", f"Hot swap fmnist-cnn ↔ fmnist-vgg (verify digests, load, 3 warm-up runs): median "
              f"{s['swap_s']:.3f} s. A client thread sent {s['requests']} requests meanwhile, {s['dropped']} failed; "
              f"latency p50/p99 {s['calm']['p50']:.3f}/{s['calm']['p99']:.3f} ms outside swaps, "
              f"{s['during_swap']['p50']:.3f}/{s['during_swap']['p99']:.3f} ms during them.", ""]
    c = res["class_log"]
    lines += [f"Class log: `add` {c['add_us']:.2f} µs per frame; flushing {c['rows']} minute rows in one "
              f"transaction {c['flush_ms']:.1f} ms (WAL, synchronous=NORMAL)."]
    return "\n".join(lines)
