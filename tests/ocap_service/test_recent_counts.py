"""RecentCounts with a driven clock: windows, series that start after a reset, bounded memory, and no
count lost when many threads add across second boundaries."""

import itertools

from ocap_service.class_log import ClassLog
from ocap_service.recent_counts import RecentCounts
from tests.ocap_service.threads import run_threads


def test_windows_and_series():
    now = [100.0]
    rc = RecentCounts(keep_seconds=50, clock=lambda: now[0])
    for s in range(100, 160):                     # 0 and 3 every second; 7 from second 140 on
        rc.add(s, "served", [0, 3] + ([7] if s >= 140 else []), low=1)
        rc.add(s, "teacher", [9], low=0)
    now[0] = 160.5
    hist, low = rc.window(10)
    assert hist == {0: 10, 3: 10, 7: 10} and low == 10
    assert rc.window(10, origin="teacher")[0] == {9: 10}
    assert rc.series(10, 3) == [{0: 10, 3: 10}, {0: 10, 3: 10, 7: 10}, {0: 10, 3: 10, 7: 10}]
    assert len(rc.series(10, 3, since=145)) == 1                  # only whole windows after the reset
    assert rc.window(100)[0][0] == 50                             # older seconds were dropped


def test_class_log_feeds_it(tmp_path):
    now = [1000.0]
    log = ClassLog(tmp_path / "ocap.db", low_confidence=0.5, clock=lambda: now[0])
    log.add([1, 1, 2], [0.9, 0.3, 0.8], "v1")
    now[0] = 1001.0
    assert log.recent.window(5) == ({1: 2, 2: 1}, 1)
    log.close()


def test_concurrent_adders_across_second_boundaries_lose_nothing(tmp_path, tiny_switch_interval):
    """Regression: add() dropped a batch whose second was older than the newest one held. ClassLog.add
    reads the clock before it takes the lock, so with several adders the thread that read second s
    often got the lock after one that read s + 1, and its counts left the recent windows."""
    ticks = itertools.count()
    log = ClassLog(tmp_path / "ocap.db", low_confidence=0.5, clock=lambda: next(ticks) / 1000)

    def adder(k):
        for _ in range(1500):
            log.add([k], [0.25], "v1")                  # one frame, low confidence

    run_threads(adder)
    hist, low = log.recent.window(10 ** 6, end=10 ** 6)
    assert hist == {k: 1500 for k in range(8)} and low == 8 * 1500
    log.close()


def test_a_late_second_is_counted_where_it_belongs():
    rc = RecentCounts(keep_seconds=50, clock=lambda: 200.0)
    for s in (100, 105, 103, 105, 101):                # late batches within the kept span
        rc.add(s, "served", [1], low=0)
    rc.add(40, "served", [2], low=0)                   # older than the kept span: dropped
    assert rc.window(100, end=200)[0] == {1: 5}
    assert [rc.window(1, end=s + 1)[0].get(1, 0) for s in range(100, 106)] == [1, 1, 0, 1, 0, 2]
