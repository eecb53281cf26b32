"""Time budgets counted in work, not in waiting: the seconds a process has had at least one core's
worth of CPU. On an idle machine a busy process's CPU time keeps pace with the wall clock (or runs
ahead of it, with several threads), so this clock reads the wall time and a budget means what it
always meant; a nice-19 worker that other processes keep waiting gets CPU slowly, its clock slows with
it, and it does the same work later instead of less work by its deadline. The daemon's supervisor
applies the same rule to the worker from outside (``work_seconds`` on its psutil CPU times), and its
``[personalize] wall_limit`` bounds how long the wait may stretch. Stdlib only: the daemon imports it."""

import time


def work_seconds(wall_s: float, cpu_s: float) -> float:
    """Work done in ``wall_s`` seconds by a process that had ``cpu_s`` seconds of CPU (all its threads):
    the CPU time, but never more than the wall time."""
    return min(wall_s, cpu_s)


class WorkClock:
    """A stopwatch of this process's work since it was made (``work_seconds`` of its own wall and
    CPU time); ``wall`` is the plain wall time, for records."""

    def __init__(self) -> None:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self._wall0

    def elapsed(self) -> float:
        return work_seconds(self.wall(), time.process_time() - self._cpu0)
