"""RecentCounts with a driven clock: windows, series that start after a reset, bounded memory."""

from service.class_log import ClassLog
from service.recent_counts import RecentCounts


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
