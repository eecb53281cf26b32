"""Run one function on many threads at once, for the tests that count what concurrent callers did."""

import threading
from typing import Callable


def run_threads(target: Callable[[int], None], n: int = 8) -> None:
    """Call ``target(k)`` for k in 0..n-1, each on a thread of its own, and wait until all return."""
    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
