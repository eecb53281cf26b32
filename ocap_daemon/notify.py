"""A small sd_notify (systemd's notification protocol), so the daemon needs no libsystemd binding:
one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or
``@name`` for the abstract namespace). Without ``$NOTIFY_SOCKET`` (not under systemd) it does nothing.
Like ``sd_notify(unset_environment=1)`` it removes the variables from the environment once read, so a
child process (the personalization worker) neither inherits them nor notifies systemd as if it were ocapd."""

import logging
import os
import socket
from typing import Optional

log = logging.getLogger(__name__)
ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, address: Optional[str] = None) -> None:
        env = {k: os.environ.pop(k, "") for k in ENV_KEYS}         # read, then unset for children
        self.address = address if address is not None else env["NOTIFY_SOCKET"]
        usec, pid = env["WATCHDOG_USEC"], env["WATCHDOG_PID"]
        # the watchdog interval systemd expects pings within (seconds), when it is meant for this process
        self.watchdog_seconds = (int(usec) / 1e6 if usec.isdigit() and (not pid or pid == str(os.getpid()))
                                 else None)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str) -> bool:
        """Send e.g. ``READY="1"``, ``STATUS="..."``, ``WATCHDOG="1"``; False when not sent."""
        if not self.address:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8")
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(msg, addr)
            return True
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.address, e)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send(READY="1", STATUS=status) if status else self.send(READY="1")

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        return self.send(STOPPING="1")

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")
