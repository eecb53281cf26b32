"""A small client for the control socket, used by ``ocapctl`` and usable by applications."""

import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ocap_core import strict_json

from .errors import ServiceError


class Unreachable(ServiceError):
    """The daemon's socket is missing or refuses connections."""


class CommandFailed(ServiceError):
    """The daemon answered ok:false; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Client:
    """One connection to the control socket; ``call`` sends a command and returns its result."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._ids = itertools.count(1)
        deadline = time.monotonic() + min(timeout, 5.0)
        while True:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            try:
                self._sock.connect(str(self.path))
                break
            except BlockingIOError as e:          # the listen backlog is full: a burst; try again shortly
                self._sock.close()
                if time.monotonic() > deadline:
                    raise Unreachable(f"{self.path} accepts no more connections: {e.strerror or e}") from e
                time.sleep(0.02)
            except OSError as e:
                self._sock.close()
                raise Unreachable(f"cannot connect to {self.path}: {e.strerror or e}") from e
        self._file = self._sock.makefile("rb")

    def call(self, cmd: str, payload: Optional[bytes] = None, **args: Any) -> Any:
        rid = next(self._ids)
        req = dict(args, v=1, id=rid, cmd=cmd)
        if payload is not None:
            req["bytes"] = len(payload)
        try:
            self._sock.sendall((strict_json.dumps(req) + "\n").encode("utf-8") + (payload or b""))
        except OSError as e:                     # closed on us; a "busy" reply may be waiting
            sent_error: Optional[OSError] = e
        else:
            sent_error = None
        try:
            line = self._file.readline()
        except OSError as e:
            raise Unreachable(f"{self.path}: no reply to {cmd}: {e}") from e
        if not line:
            raise Unreachable(f"{self.path} closed the connection" + (f" ({sent_error})" if sent_error else ""))
        reply = json.loads(line.decode("utf-8"))
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise CommandFailed(str(err.get("code")), str(err.get("message")))
        return reply.get("result")

    def predict(self, image: np.ndarray) -> Any:
        """Classify one uint8 image (H×W or H×W×C) on the served model."""
        img = np.ascontiguousarray(image, dtype=np.uint8)
        return self.call("predict", payload=img.tobytes(), shape=list(img.shape), dtype="uint8")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
