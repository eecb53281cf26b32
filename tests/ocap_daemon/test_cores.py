"""ocap_daemon.cores: the worker takes one thread per idle core (never more than are free, at least one, at
most the cap), from per-CPU load read out of /proc/stat with the load average as a floor."""

import pytest

from ocap_daemon.cores import (
    busy_shares,
    idle_cores,
    measure_idle_cores,
    parse_proc_stat,
    usable_cpus,
    worker_threads,
)


@pytest.mark.parametrize("busy, load, idle", [
    ([0.0, 0.0], None, 2),                      # an idle 2-core box
    ([0.05, 0.1], 0.2, 2),                      # background noise still leaves both
    ([1.0, 0.05], None, 1),                     # one busy-loop process
    ([1.0, 1.0], None, 0),                      # a busy 2-core box
    ([0.7, 0.7], None, 0),                      # spread over both cores: 0.6 of a core free is not one
    ([0.6, 0.6], None, 1),                      # 0.8 of a core free counts as one (IDLE_SHARE)
    ([0.2, 0.2], None, 1),                      # 1.6 cores free: one thread
    ([0.0, 0.0], 2.0, 0),                       # the sample fell into a pause of a busy box
    ([0.0, 0.0], 1.0, 1),
    ([0.0, 0.0], 9.0, 0),                       # a load above the CPU count takes them all, not more
    ([0.1] * 4, None, 3),                       # 3.6 free of 4
    ([0.05] * 4, None, 4),
    ([0.5] * 8, 3.0, 4),
    ([1.0] * 6 + [0.0] * 2, None, 2),
    ([0.0], None, 1),
    ([1.5, -0.2], None, 1),                     # shares outside [0, 1] are clamped
])
def test_idle_cores_follow_the_load(busy, load, idle):
    assert idle_cores(busy, load) == idle


@pytest.mark.parametrize("cpus", [1, 2, 4, 6, 8, 12])
@pytest.mark.parametrize("busy_cores", [0, 1, 2, 4, 8])
def test_threads_never_exceed_the_free_cores_and_are_at_least_one(cpus, busy_cores):
    busy = [1.0] * min(busy_cores, cpus) + [0.0] * max(cpus - busy_cores, 0)
    threads = worker_threads(0, idle_cores(busy))
    assert threads == max(1, cpus - busy_cores)
    for cap in (1, 2, 3):
        assert worker_threads(cap, idle_cores(busy)) == min(cap, max(1, cpus - busy_cores))


def test_one_thread_on_a_busy_two_core_box():
    assert worker_threads(0, idle_cores([0.9, 0.95], load=2.3)) == 1
    assert worker_threads(2, idle_cores([0.9, 0.95], load=2.3)) == 1


@pytest.mark.parametrize("requested, idle, threads", [(0, 0, 1), (0, 3, 3), (2, 3, 2), (4, 3, 3), (1, 0, 1), (8, 8, 8)])
def test_worker_threads_caps(requested, idle, threads):
    assert worker_threads(requested, idle) == threads


STAT = """cpu  300 0 100 1600 0 0 0 0 0 0
cpu0 100 0 50 800 50 0 0 0 0 0
cpu1 200 10 50 800 0 0 0 0 0 0
cpu3 0 0 0 0 0 0 0 0 0 0
intr 12345 1 2
ctxt 999
"""


def test_proc_stat_busy_shares():
    before = parse_proc_stat(STAT)
    assert sorted(before) == [0, 1, 3]                      # the all-CPU line and other counters are skipped
    assert before[0] == (150.0, 1000.0) and before[1] == (260.0, 1060.0)
    after = {0: (150.0 + 10, 1000.0 + 100), 1: (260.0 + 100, 1060.0 + 100), 3: (0.0, 0.0)}
    shares = busy_shares(before, after, [0, 1, 3, 5])
    assert shares[:2] == pytest.approx((0.1, 1.0))
    assert shares[2:] == (1.0, 1.0)                         # no ticks (offline) or unknown: not free
    assert idle_cores(shares[:2]) == 1


def test_measure_on_this_machine(tmp_path):
    cpus = usable_cpus()
    assert cpus and all(isinstance(c, int) for c in cpus)
    assert 0 <= measure_idle_cores(sample_s=0.05) <= len(cpus)
    # no /proc/stat: the load average alone decides
    assert 0 <= measure_idle_cores(sample_s=0.0, stat_path=str(tmp_path / "absent")) <= len(cpus)
