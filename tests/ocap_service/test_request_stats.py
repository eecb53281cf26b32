"""RequestStats with a driven clock: totals, per-window rates over whole seconds, latency percentiles."""

import itertools

import pytest

from ocap_service.request_stats import RequestStats
from tests.ocap_service.threads import run_threads


def test_rates_and_percentiles():
    now = [1000.0]
    st = RequestStats(clock=lambda: now[0])
    assert st.snapshot()["latency_ms"]["p50"] is None
    for _ in range(30):                         # 3 s after start: rates over those 3 s, not the window
        st.record(1, 1.0)
    now[0] = 1003.5
    assert st.snapshot()["rate_per_s"] == {"10s": 10.0, "60s": 10.0}
    now[0] = 1000.0
    for sec in range(70):                       # 70 s at 5 frames/s, the last 10 s at 20 frames/s
        now[0] = 1000.0 + sec
        for _ in range(20 if sec >= 60 else 5):
            st.record(1, latency_ms=float(sec % 10))
    now[0] = 1070.2
    snap = st.snapshot()
    assert snap["frames"] == snap["batches"] == 30 + 60 * 5 + 10 * 20
    assert snap["rate_per_s"]["10s"] == pytest.approx(20.0)
    assert snap["rate_per_s"]["60s"] == pytest.approx((50 * 5 + 10 * 20) / 60)       # seconds 10..69
    assert snap["latency_ms"]["p50"] == pytest.approx(4.5, abs=0.6) and snap["latency_ms"]["p99"] <= 9.0


def test_concurrent_recorders_lose_nothing(tiny_switch_interval):
    ticks = itertools.count()
    st = RequestStats(clock=lambda: 1000 + next(ticks) / 2000)        # the second changes under the threads

    def recorder(_):
        for i in range(5000):
            st.record(2, 0.1)
            if i % 50 == 0:
                st.record_failure()

    run_threads(recorder)
    snap = st.snapshot()
    assert (snap["frames"], snap["batches"], snap["failed"]) == (80000, 40000, 800)
    with st._lock:
        seconds = [s for s, _ in st._per_second]
    assert seconds == sorted(set(seconds))              # one entry per second, in order
