"""Named fault points for the reliability tests: faults a test cannot cause from outside (a serving
path that hangs, a kill at an exact step). Active only when the test-only ``OCAP_FAULTS`` environment
variable names them, as ``POINT=ACTION[@SECONDS]`` items separated by commas, ACTION one of ``stall``
(block forever), ``kill`` (SIGKILL this process), ``segv`` (a native crash: read address 0), ``error`` (raise OSError EIO) or ``enospc`` (raise
OSError ENOSPC, a full disk), SECONDS after the
process imported this module. Unset (always, outside tests), ``point`` is one falsy check."""

import errno
import logging
import os
import signal
import threading
import time
from typing import Dict, Tuple

log = logging.getLogger(__name__)
ACTIONS = ("stall", "kill", "segv", "error", "enospc")


def parse(spec: str) -> Dict[str, Tuple[str, float]]:
    out: Dict[str, Tuple[str, float]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition("=")
        action, _, after = rest.partition("@")
        if not name or action not in ACTIONS:
            raise ValueError(f"OCAP_FAULTS item {item!r}: expected POINT={'|'.join(ACTIONS)}[@SECONDS]")
        out[name] = (action, float(after or 0))
    return out


_FAULTS = parse(os.environ.get("OCAP_FAULTS", ""))
_START = time.monotonic()


def point(name: str) -> None:
    """Act out the fault named ``name`` when OCAP_FAULTS enables it (and its delay has passed)."""
    if not _FAULTS or name not in _FAULTS:
        return
    action, after = _FAULTS[name]
    if time.monotonic() - _START < after:
        return
    log.critical("fault point %s: %s (OCAP_FAULTS)", name, action)
    if action == "stall":
        threading.Event().wait()
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "segv":
        import ctypes

        ctypes.string_at(0)                     # SIGSEGV in native code, as a bad kernel would
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at fault point {name})")
    raise OSError(errno.EIO, f"injected I/O error at fault point {name}")
