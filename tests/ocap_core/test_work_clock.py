"""The work clock: the process's CPU time, never more than the wall time. Waiting (here: sleeping,
as a worker waits for a core other processes hold) does not advance it; working does."""

import time

import pytest

from ocap_core.work_clock import WorkClock, work_seconds


@pytest.mark.parametrize("wall,cpu,work", [(10.0, 10.0, 10.0), (10.0, 0.5, 0.5), (10.0, 19.0, 10.0), (0.0, 0.0, 0.0)])
def test_work_is_cpu_time_up_to_the_wall_time(wall, cpu, work):
    assert work_seconds(wall, cpu) == work


def test_waiting_does_not_count_and_working_does():
    clock = WorkClock()
    time.sleep(0.4)
    waited = clock.elapsed()
    assert clock.wall() >= 0.4 and waited < 0.2, waited
    cpu0 = time.process_time()
    while time.process_time() - cpu0 < 0.3:      # 0.3 s of CPU, however long the machine makes that take
        pass
    worked = clock.elapsed()
    assert waited + 0.3 <= worked + 1e-6 and worked <= clock.wall()
