"""Serving-plane benchmark (torch-free), side by side in one run on the shipped models:

- socket round trips: 1, 4 and 16 client processes against a real ``Server`` (real Unix socket,
  class log, cache and its thread), latency and throughput;
- what the serving path adds over a bare onnxruntime call, and what the class log costs (serving-path
  throughput with and without ``ClassLog.add``, interleaved blocks);
- swap under load: 16 clients while the model is swapped 5 times, failed requests and p99 latency of
  requests overlapping a swap vs the rest;
- serving RSS of a ``python -m ocap_service`` process with a model loaded, and that no torch library is
  mapped into it.
"""

import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ocap_core.data import load_dataset
from ocap_core.preprocess import preprocess
from ocap_daemon.launch import start_daemon
from ocap_service.class_log import ClassLog
from ocap_service.client import Client
from ocap_service.server import build_server

from .pool import spawn_pool
from .report import figure, run_stamp

MODELS = ["fmnist-cnn", "fmnist-resnet20", "fmnist-mobilenetv2", "fmnist-vgg"]
SOCKET_MODELS = ["fmnist-cnn", "fmnist-resnet20"]
CLIENTS = [1, 4, 16]
TARGETS = {"class_log_cost": 0.03, "swap_p99_ratio": 2.0, "rss_mb": 250.0}
Request = Tuple[float, float, bool]          # wall start time, latency ms, answered


def _pct(ms: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(ms, np.float64)
    if not len(a):
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


# -- socket clients (separate processes, so the server's GIL is its own) -------------------------------
START_TIMEOUT_S = 300.0     # client processes import numpy and connect first; on a busy machine that is slow


def client_loop(sock: str, frames: np.ndarray, seconds: float, seed: int, ready) -> List[Request]:
    """One client: connect, wait at ``ready`` (a barrier every client and the caller pass), then predict
    random frames back to back for ``seconds``. (A fixed start time once came before any client had
    imported on a loaded machine, and the run measured nothing.)"""
    rng = np.random.default_rng(seed)
    out: List[Request] = []
    with Client(Path(sock)) as c:
        ready.wait(START_TIMEOUT_S)
        stop_at = time.time() + seconds
        while time.time() < stop_at:
            frame = frames[int(rng.integers(len(frames)))]
            t0, p0 = time.time(), time.perf_counter()
            try:
                c.predict(frame)
                ok = True
            except Exception:           # counted as a failed request; the run goes on
                ok = False
            out.append((t0, (time.perf_counter() - p0) * 1e3, ok))
    return out


def run_clients(sock: Path, frames: np.ndarray, clients: int, seconds: float, during=None) -> List[Request]:
    """``clients`` processes for ``seconds``; ``during()`` runs in this process meanwhile."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, spawn_pool(clients) as pool:
        ready = manager.Barrier(clients + 1)
        futures = [pool.submit(client_loop, str(sock), frames, seconds, s, ready) for s in range(clients)]
        ready.wait(START_TIMEOUT_S)                       # every client is connected: the run starts now
        if during is not None:
            during()
        return [r for f in futures for r in f.result()]


def socket_round_trips(model: str, frames: np.ndarray, seconds: float) -> List[Dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = build_server(model, Path(tmp), Path(tmp) / "s.sock")
        srv.start()
        try:
            for n in CLIENTS:
                reqs = run_clients(srv.control.path, frames, n, seconds)
                lat = [ms for _, ms, ok in reqs if ok]
                out.append({"model": model, "clients": n, "requests": len(reqs), "failed": sum(not ok for *_, ok in reqs),
                            "per_s": len(lat) / seconds, **_pct(lat)})
        finally:
            srv.stop()
    return out


def swap_under_load(frames: np.ndarray, seconds: float, swaps: int = 5, clients: int = 16) -> Dict[str, Any]:
    """16 clients; after a calm third of the run, ``swaps`` swaps fmnist-cnn <-> fmnist-vgg spread over the rest."""
    spans: List[Tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = build_server("fmnist-cnn", Path(tmp), Path(tmp) / "s.sock")
        srv.start()

        def swapper():
            time.sleep(seconds / 3)
            for k in range(swaps):
                t0 = time.time()
                ok, reason = srv.swap("fmnist-vgg" if k % 2 == 0 else "fmnist-cnn")
                spans.append((t0, time.time()))
                if not ok:
                    raise RuntimeError(f"swap {k} failed: {reason}")
                time.sleep(seconds / 2 / swaps)

        try:
            reqs = run_clients(srv.control.path, frames, clients, seconds, during=swapper)
        finally:
            srv.stop()
    overlaps = [any(t < b and t + ms / 1e3 > a for a, b in spans) for t, ms, _ in reqs]
    calm = [ms for (_, ms, ok), o in zip(reqs, overlaps) if ok and not o]
    busy = [ms for (_, ms, ok), o in zip(reqs, overlaps) if ok and o]
    c, b = _pct(calm), _pct(busy)
    return {"clients": clients, "swaps": len(spans), "swap_s": statistics.median(b - a for a, b in spans),
            "requests": len(reqs), "failed": sum(not ok for *_, ok in reqs), "during_n": len(busy),
            "calm": c, "during": b, "p99_ratio": b["p99"] / c["p99"] if busy and calm else float("nan")}


# -- in-process path costs ------------------------------------------------------------------------------
def path_overhead(model: str, frames: np.ndarray, runs: int) -> Dict[str, Any]:
    """Batch-1 latency: bare session.run on preprocessed input vs Server.infer (preprocess, predict,
    map ids, class log, hand-off to the cache thread), interleaved in one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        srv = build_server(model, Path(tmp), Path(tmp) / "s.sock")
        srv.start()
        m = srv.slot.current()
        name = m.session.get_inputs()[0].name
        x = preprocess(frames[:runs], m.card.input)
        bare, full = [], []
        for i in range(runs):
            t0 = time.perf_counter()
            m.session.run(["logits"], {name: x[i:i + 1]})
            bare.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            srv.infer(frames[i:i + 1])
            full.append((time.perf_counter() - t0) * 1e3)
        srv.stop()
    b, f = _pct(bare), _pct(full)
    return {"model": model, "bare_p50": b["p50"], "infer_p50": f["p50"], "infer_p99": f["p99"],
            "ratio": f["p50"] / b["p50"]}


def class_log_overhead(frames: np.ndarray, blocks: int, block: int) -> Dict[str, float]:
    """Serving-path throughput (fmnist-cnn, batch 1) with the class log counting vs with its ``add``
    replaced by a no-op (this benchmark's switch), in alternating blocks after a warm-up; medians."""
    with tempfile.TemporaryDirectory() as tmp:
        srv = build_server("fmnist-cnn", Path(tmp), Path(tmp) / "s.sock")
        srv.start()
        real_add = srv.class_log.add
        rates: Dict[bool, List[float]] = {True: [], False: []}
        for i in range(3000):                  # until the cache's buffers settle (offers get cheaper)
            srv.infer(frames[i % len(frames)][None])
        srv.wait_idle()
        for b in range(2 * blocks):
            on = b % 4 in (0, 3)               # on, off, off, on, ...: a drift over time cancels out
            srv.class_log.add = real_add if on else (lambda *a, **k: None)
            t0 = time.perf_counter()
            for i in range(block):
                srv.infer(frames[i % len(frames)][None])
            rates[on].append(block / (time.perf_counter() - t0))
            srv.wait_idle()
        srv.class_log.add = real_add
        srv.stop()
    with_log, without = statistics.median(rates[True]), statistics.median(rates[False])
    return {"with_per_s": with_log, "without_per_s": without, "cost": 1 - with_log / without}


def class_log_cost(n: int) -> Dict[str, float]:
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


# -- the serving process on its own ---------------------------------------------------------------------
def serving_rss(model: str = "fmnist-cnn") -> Dict[str, Any]:
    """RSS of ``python -m ocap_service`` with ``model`` loaded after 200 predictions, and whether any torch
    library is mapped into the process."""
    import psutil

    frames = load_dataset("fashion-mnist", "test").x[:200]
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "s.sock"
        args = ["ocap_service", "--model", model, "--state-dir", tmp, "--socket", str(sock), "--log-level", "WARNING"]
        with start_daemon(args, sock, Path(tmp) / "service.log") as daemon, Client(sock) as c:
            for f in frames:
                c.predict(f)
            p = psutil.Process(daemon.pid)
            rss = p.memory_info().rss
            torch_maps = sorted({m.path for m in p.memory_maps() if "torch" in m.path.lower()})
    return {"model": model, "rss_mb": rss / 2 ** 20, "torch_mapped": torch_maps}


def run(quick: bool = False) -> Dict[str, Any]:
    frames = load_dataset("fashion-mnist", "test").x[:1000]
    seconds = 1.5 if quick else 5.0
    socket_models = SOCKET_MODELS[:1] if quick else SOCKET_MODELS
    return {"quick": quick, "seconds": seconds,
            "socket": [r for m in socket_models for r in socket_round_trips(m, frames[:200], seconds)],
            "swap": swap_under_load(frames[:200], 4.0 if quick else 10.0),
            "paths": [path_overhead(m, frames, 100 if quick else 500) for m in (MODELS[:1] if quick else MODELS)],
            "runs": 100 if quick else 500,
            "class_log_overhead": class_log_overhead(frames, 3 if quick else 20, 300 if quick else 1000),
            "class_log": class_log_cost(20_000 if quick else 100_000),
            "rss": serving_rss()}


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def markdown(res: Dict[str, Any], machine: str, versions: Dict[str, str]) -> str:
    s, clo, rss = res["swap"], res["class_log_overhead"], res["rss"]
    lines = ["## Serving plane (`ocap bench serving`)", "",
             run_stamp(machine, res["quick"]) + ". Versions: "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". onnxruntime CPU, 1 intra-op thread, "
             "batch 1, Fashion-MNIST test frames.", "",
             "### Targets", "", "| target | measured | verdict |", "|---|---|---|",
             f"| class logging costs ≤ 3 % of serving throughput | {100 * clo['cost']:.1f} % "
             f"({clo['with_per_s']:.0f} vs {clo['without_per_s']:.0f} frames/s) | {_verdict(clo['cost'] <= 0.03)} |",
             f"| swap under load ({s['clients']} clients, {s['swaps']} swaps): 0 failed requests | {s['failed']} failed of "
             f"{s['requests']} | {_verdict(s['failed'] == 0)} |",
             f"| p99 during swaps ≤ 2× idle p99 | {figure(s['during']['p99'])} vs {figure(s['calm']['p99'])} ms = "
             f"{figure(s['p99_ratio'], unit='×')} ({s['during_n']} requests overlapped a swap) | "
             f"{_verdict(s['p99_ratio'] <= 2)} |",
             f"| serving RSS with {rss['model']} loaded ≤ 250 MB | {rss['rss_mb']:.0f} MB | "
             f"{_verdict(rss['rss_mb'] <= 250)} |",
             f"| no torch in the serving process | {'none mapped' if not rss['torch_mapped'] else rss['torch_mapped']} | "
             f"{_verdict(not rss['torch_mapped'])} |", "",
             f"### Socket round trips ({res['seconds']:g} s per row; clients are separate processes; on this "
             "machine they share its cores with the server)", "",
             "| model | clients | requests/s | p50 ms | p99 ms | failed |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['clients']} | {r['per_s']:.0f} | {figure(r['p50'])} | {figure(r['p99'])} | "
              f"{r['failed']} |" for r in res["socket"]]
    lines += ["", f"Swap under load: fmnist-cnn ↔ fmnist-vgg, median swap (verify digests, load, 3 warm-up runs) "
              f"{s['swap_s'] * 1e3:.0f} ms; p50/p99 {figure(s['calm']['p50'])}/{figure(s['calm']['p99'])} ms outside "
              f"swaps, {figure(s['during']['p50'])}/{figure(s['during']['p99'])} ms for requests overlapping one.", "",
              "### The serving path vs a bare onnxruntime call (in process, interleaved)", "",
              f"*bare* is `session.run` on a preprocessed frame; *infer* is `Server.infer`: preprocess, predict, map "
              f"to base ids, class log, hand-off of the frame to the cache thread (whose KL scoring and file write run "
              f"off the request path). {res['runs']} frames per model.", "",
              "| model | bare p50 ms | infer p50 ms | infer p99 ms | infer ÷ bare |", "|---|---|---|---|---|"]
    lines += [f"| {p['model']} | {p['bare_p50']:.3f} | {p['infer_p50']:.3f} | {p['infer_p99']:.3f} | "
              f"{p['ratio']:.2f} |" for p in res["paths"]]
    c = res["class_log"]
    lines += ["", f"Class log on its own: `add` {c['add_us']:.2f} µs per frame; flushing {c['rows']} minute rows in "
              f"one transaction {c['flush_ms']:.1f} ms (WAL, synchronous=NORMAL)."]
    return "\n".join(lines)
