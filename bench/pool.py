"""Process pools for benchmark clients: spawned, not forked (a fork of a process with threads can
inherit a held lock), on every Python the benchmarks run on."""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes. Python 3.6 (JetPack 4.6's) has no ``mp_context=``: there
    the default start method, which its executor uses, is set to spawn."""
    if sys.version_info >= (3, 7):          # noqa: UP036 (ruff targets 3.8; this also runs on 3.6)
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    multiprocessing.set_start_method("spawn", force=True)
    return ProcessPoolExecutor(workers)
