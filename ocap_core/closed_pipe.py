"""Command-line tools whose reader went away (``ocap eval ... | head -1``) exit quietly.

Python ignores SIGPIPE, so a write to a pipe nobody reads any more raises BrokenPipeError: at a print,
or at the flush when the interpreter exits, which prints "Exception ignored ... BrokenPipeError" and
exits 120. Restoring SIGPIPE's default action is no cure in a process that also writes to sockets (a
client that hangs up would kill it), so the error is caught instead. Standard library only.
"""

import os
import sys
from typing import Callable

EXIT_CLOSED_PIPE = 141          # 128 + SIGPIPE: what a shell reports for a writer SIGPIPE ended


def quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """``run()``'s exit code, with stdout flushed before returning; 141 without a traceback when stdout
    is a closed pipe (also for ``--help``, whose SystemExit passes through otherwise)."""
    try:
        try:
            return run()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        try:                    # the flush at exit would fail again: stdout goes nowhere from here on
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, sys.stdout.fileno())
            os.close(fd)
        except (OSError, ValueError):
            pass
        return EXIT_CLOSED_PIPE
