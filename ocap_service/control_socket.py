"""The control socket (DESIGN.md §Control socket): a Unix stream server speaking JSON lines.

Request ``{"v":1,"id":7,"cmd":"status", ...}``; reply ``{"v":1,"id":7,"ok":true,"result":{...}}`` or
``{"v":1,"id":7,"ok":false,"error":{"code":...,"message":...}}``. A command that takes a payload (``predict``)
announces ``"bytes": N`` in its header line and the N raw bytes follow. Each command is declared once in
``commands.py`` (arguments, mutating, payload); a handler is registered for a declared name. Bad input gets an error reply on that connection only;
lines over 64 KiB, payloads over the configured cap and idle connections are cut off. Mutating commands
are checked against the peer's SO_PEERCRED credentials.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set

from ocap_core import strict_json

from .commands import BY_NAME, Command, command
from .errors import ServiceError

log = logging.getLogger(__name__)
MAX_LINE = 64 * 1024
STOP_GRACE = 10.0       # seconds stop() waits for the requests in flight to be answered
Handler = Callable[[Dict[str, Any], Optional[bytes]], Any]


@dataclass(frozen=True)
class Registered:
    spec: Command                   # its declaration: mutating (needs root, the daemon's uid or an
    handler: Handler                # allowed group), payload (a header's "bytes" of raw data follow)


class RequestError(Exception):
    """Raised by handlers (and the server) to reply ok:false with a code and a message. ``fatal``:
    the stream cannot be followed any more (a payload that will not be read), so the connection closes."""

    def __init__(self, code: str, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


def peer_credentials(conn: socket.socket):
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


class ControlServer:
    """Serve registered commands on ``path`` until ``stop``; one thread per connection, capped."""

    def __init__(self, path: Path, max_payload: int = 1 << 20, max_connections: int = 16,
                 idle_timeout: float = 30.0, allowed_gids: Set[int] = frozenset()) -> None:
        self.path = Path(path)
        self.max_payload, self.max_connections, self.idle_timeout = max_payload, max_connections, idle_timeout
        self.allowed_gids = set(allowed_gids)
        self.commands: Dict[str, Registered] = {}
        self._sock: Optional[socket.socket] = None
        self._lock_fd: Optional[int] = None
        self._active = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # open connections and their threads: added by the accept thread, removed by each connection's
        # own thread, read by stop()
        self._conns: Dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()

    def register(self, name: str, handler: Handler) -> None:
        """Answer the declared command ``name`` (``commands.py``) with ``handler``."""
        if name in self.commands:
            raise ServiceError(f"control command {name!r} is registered twice")
        self.commands[name] = Registered(command(name), handler)

    def register_all(self, handlers: Dict[str, Handler]) -> None:
        """``register`` each of ``handlers`` (a part's ``handlers()``)."""
        for name, handler in handlers.items():
            self.register(name, handler)

    def start(self) -> None:
        """Take the instance lock, replace a stale socket file, listen (mode 0660), serve in a thread."""
        lock_path = str(self.path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise ServiceError(f"another instance holds {lock_path}; is ocap already running?") from e
        self._lock_fd = fd
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ServiceError(f"{self.path} exists and is not a socket; not replacing it")
            self.path.unlink()                      # stale: we hold the lock, so nobody serves it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(str(self.path), 0o660)
        sock.listen(max(128, self.max_connections))     # a burst waits here rather than being refused
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="control-socket", daemon=True)
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def stop(self) -> None:
        """Stop accepting, let each connection finish the request it is handling (its reply goes out),
        close idle ones at once, then remove the socket. Handlers' effects (a counted prediction) are
        all done when this returns, so the server can flush and close after it."""
        self._stopping.set()
        if self._thread:
            self._thread.join()                     # no connection is added after this
        with self._conns_lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            try:
                conn.shutdown(socket.SHUT_RD)       # a thread waiting for a line reads EOF; replies still go out
            except OSError:
                pass                                # already closed by its thread
        deadline = time.monotonic() + STOP_GRACE
        for _, t in conns:
            t.join(max(0.0, deadline - time.monotonic()))
        left = sum(t.is_alive() for _, t in conns)
        if left:
            log.warning("%d control connection(s) still busy after %.0f s; stopping without them", left, STOP_GRACE)
        if self._sock:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):      # (unlink's missing_ok= is 3.8+)
                self.path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            if not self._active.acquire(blocking=False):
                self._send(conn, None, error=("busy", f"too many connections (max {self.max_connections})"))
                conn.close()
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="control-connection", daemon=True)
            with self._conns_lock:
                self._conns[conn] = t
            try:
                t.start()
            except RuntimeError as e:               # no thread to be had: this client only is refused
                log.error("control connection refused: %s", e)
                with self._conns_lock:
                    del self._conns[conn]
                conn.close()
                self._active.release()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.idle_timeout)
            creds = peer_credentials(conn)
            f = conn.makefile("rb")
            while not self._stopping.is_set():
                try:
                    line = f.readline(MAX_LINE + 1)
                except socket.timeout:
                    break                               # idle: close this connection only
                if not line:
                    break
                if len(line) > MAX_LINE:
                    self._send(conn, None, error=("too_large", f"request line over {MAX_LINE} bytes"))
                    break
                if line.strip() and not self._handle(conn, f, line, creds):
                    break
        except OSError as e:
            log.debug("control connection ended: %s", e)
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
            conn.close()
            self._active.release()

    def _handle(self, conn: socket.socket, f, line: bytes, creds) -> bool:
        """Answer one request; False when the connection must close."""
        rid = None
        try:
            try:
                req = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise RequestError("bad_request", f"not a JSON line: {e}") from e
            if not isinstance(req, dict):
                raise RequestError("bad_request", "a request is a JSON object")
            rid = req.get("id")
            # framing first: announced bytes are consumed whatever the verdict on the header
            payload = self._payload(f, req) if "bytes" in req else None
            if req.get("v") != 1:
                raise RequestError("bad_request", f"protocol version must be 1, got {req.get('v')!r}")
            reg = self.commands.get(req.get("cmd"))
            if reg is None:
                raise RequestError("unknown_command", self._unknown(req.get("cmd")))
            cmd = reg.spec
            if cmd.payload != (payload is not None):
                raise RequestError("bad_request", f"{req['cmd']} " + ("needs \"bytes\": N and N bytes after the line"
                                                                    if cmd.payload else "takes no payload"))
            if cmd.mutating and not self._may_mutate(creds):
                raise RequestError("forbidden", f"{req['cmd']} needs root, the daemon's user or an allowed group")
            self._send(conn, rid, result=reg.handler(req, payload))
        except RequestError as e:
            self._send(conn, rid, error=(e.code, str(e)))
            return not e.fatal
        except Exception as e:  # a handler bug must not take the server down
            log.exception("control command failed")
            self._send(conn, rid, error=("internal", f"{type(e).__name__}: {e}"))
        return True

    def _unknown(self, name: Any) -> str:
        known = f"known here: {', '.join(sorted(self.commands))}"
        spec = BY_NAME.get(name) if isinstance(name, str) else None
        if spec is not None and spec.ocapd_only:
            return (f"{name} is answered by ocapd (the control plane); this socket is the serving plane alone "
                    f"(python -m ocap_service); {known}")
        return f"unknown command {name!r}; {known}"

    def _payload(self, f, req: Dict[str, Any]) -> bytes:
        n = req.get("bytes")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise RequestError("bad_request", f"\"bytes\" must be a non-negative integer, got {n!r}", fatal=True)
        if n > self.max_payload:
            raise RequestError("too_large", f"payload of {n} bytes over the limit of {self.max_payload}", fatal=True)
        data = f.read(n)
        if len(data) != n:
            raise RequestError("bad_request", f"expected {n} payload bytes, got {len(data)}", fatal=True)
        return data

    def _may_mutate(self, creds) -> bool:
        _, uid, gid = creds
        return uid == 0 or uid == os.getuid() or gid in self.allowed_gids

    @staticmethod
    def _send(conn: socket.socket, rid: Any, result: Any = None, error=None) -> None:
        msg: Dict[str, Any] = {"v": 1, "id": rid, "ok": error is None}
        if error is None:
            msg["result"] = result
        else:
            msg["error"] = {"code": error[0], "message": error[1]}
        try:
            conn.sendall((strict_json.dumps(msg) + "\n").encode("utf-8"))
        except OSError as e:
            log.debug("reply not sent: %s", e)
