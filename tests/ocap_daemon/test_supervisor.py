"""When the supervisor stops a worker, on given figures: the time budget counts work (CPU time, at most
the wall time), the wall limit bounds the wait, and a reason names starvation only when the worker was
short of CPU. The real subprocess under these rules is in test_worker.py."""

import pytest

from ocap_daemon.supervisor import STARVED, WAIT_NOTE_AFTER_S, stop_reason, waiting_note


@pytest.mark.parametrize("budget,limit,elapsed,cpu,reason,starved", [
    (160, 3600, 161, None, "over its time budget of 160 s", False),      # CPU unreadable: the wall time counts
    (160, 3600, 161, 150.0, None, False),                                 # worked 150 s of 160
    (160, 3600, 170, 165.0, "over its time budget of 160 s", False),
    (160, 3600, 400, 161.0, "over its time budget of 160 s; it got 161.0 s of CPU in 400 s", True),
    (160, 3600, 3601, 3.0, "still running at its wall limit of 3600 s; it got 3.0 s of CPU", True),
    (160, 3600, 3601, 200.0, "over its time budget", True),               # the budget is named first
    (160, 0, 100000, 3.0, None, False),                                   # 0: no wall limit
    (0, 0, 100000, 3.0, None, False),
    (160, 3600, 159, 300.0, None, False),                                 # two threads: work is at most the wall time
])
def test_the_budget_counts_work_and_the_wall_limit_the_wait(budget, limit, elapsed, cpu, reason, starved):
    why = stop_reason(budget, limit, elapsed, cpu, 19)
    if reason is None:
        assert why is None
    else:
        assert why is not None and why.startswith(reason) and (STARVED in why) == starved, why
        assert not starved or "at nice 19" in why and "[personalize] nice and wall_limit" in why


@pytest.mark.parametrize("elapsed,cpu,note", [
    (300.0, 3.0, " (kept waiting: 3 s of CPU in 300 s)"),
    (300.0, 151.0, ""),                                  # half a core or more: not waiting
    (WAIT_NOTE_AFTER_S - 1, 0.0, ""),                    # too young to tell
    (300.0, None, ""),                                   # CPU unreadable: say nothing
])
def test_the_status_line_notes_a_worker_kept_waiting(elapsed, cpu, note):
    assert waiting_note(elapsed, cpu) == note
