"""The control socket over a real Unix socket: JSON-line protocol, a predict payload on the shipped CNN,
errors that keep the connection (and others) alive, caps, the instance lock, SO_PEERCRED, and a
stop that lets the request in flight finish."""

import json
import os
import socket
import stat
import threading
import time

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_service.client import Client, CommandFailed, Unreachable
from ocap_service.control_socket import MAX_LINE, ControlServer, RequestError
from ocap_service.errors import ServiceError
from ocap_service.model_slot import ModelSlot, load_model
from tests.helpers import WAIT_S, wait_until


@pytest.fixture(scope="module")
def slot():
    return ModelSlot(load_model("fmnist-cnn"))


def _predict(slot):
    def handler(req, payload):
        if req.get("dtype") != "uint8":
            raise RequestError("bad_request", f"dtype must be uint8, got {req.get('dtype')!r}")
        img = np.frombuffer(payload, np.uint8).reshape(req["shape"])
        p = slot.current().predict(img)
        return {"class_id": int(p.class_ids[0]), "confidence": float(p.confidence[0]),
                "model_version": p.model_version}
    return handler


@pytest.fixture
def server(tmp_path, slot):
    srv = ControlServer(tmp_path / "ocap.sock", max_payload=4096, max_connections=3, idle_timeout=WAIT_S)
    srv.register("status", lambda req, _: {"version": slot.current().version})
    srv.register("predict", _predict(slot))
    srv.register("pause", lambda req, _: {"paused": True})
    srv.start()
    yield srv
    srv.stop()


def _connect(path):
    """A connected socket, or None while the listen backlog is full (a burst the server is accepting)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT_S)
    try:
        s.connect(str(path))
        return s
    except BlockingIOError:
        s.close()
        return None


def _raw(path):
    s = wait_until(lambda: _connect(path), interval=0.02, what=f"{path} to accept a connection")
    return s, s.makefile("rb")


def _served(path):
    """Whether a new client is served a status reply (not refused as busy)."""
    try:
        with Client(path) as c:
            return c.call("status") is not None
    except (CommandFailed, Unreachable):
        return False


def test_commands_and_predict_round_trip(server, slot):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    img = load_dataset("fashion-mnist", "test").x[0]
    with Client(server.path) as c:
        assert c.call("status") == {"version": slot.current().version}
        got = c.predict(img)
        assert got["class_id"] == int(slot.current().predict(img).class_ids[0])
        assert c.call("pause") == {"paused": True}                 # same uid: allowed
        with pytest.raises(CommandFailed, match="unknown_command"):
            c.call("reboot")
        assert c.call("status")["version"]                          # the connection lives on


def test_bad_lines_get_error_replies_and_touch_no_one_else(server):
    other = Client(server.path)
    s, f = _raw(server.path)
    s.sendall(b"{not json\n")
    reply = json.loads(f.readline())
    assert reply["ok"] is False and reply["id"] is None and reply["error"]["code"] == "bad_request"
    s.sendall(b'{"v":2,"id":5,"cmd":"status"}\n')
    assert json.loads(f.readline())["error"]["message"].startswith("protocol version")
    s.sendall(b'{"v":2,"id":6,"cmd":"predict","bytes":3}\nabc{"v":1,"id":7,"cmd":"status","bytes":2}\nxy')
    assert json.loads(f.readline())["error"]["message"].startswith("protocol version")    # abc consumed
    assert json.loads(f.readline())["error"]["message"] == "status takes no payload"      # xy consumed
    s.sendall(b'{"v":1,"id":8,"cmd":"predict"}\n')
    assert "needs \"bytes\"" in json.loads(f.readline())["error"]["message"]
    s.sendall(b"x" * (MAX_LINE + 10) + b"\n")
    assert json.loads(f.readline())["error"]["code"] == "too_large"
    assert f.readline() == b""                                      # that connection is closed ...
    assert other.call("status")                                     # ... the other one is not
    s.close()
    for bad in (b'"bytes":99999', b'"bytes":-1', b'"bytes":"7"'):  # a payload it will not read: closed
        s, f = _raw(server.path)
        s.sendall(b'{"v":1,"id":9,"cmd":"predict",' + bad + b"}\n")
        assert json.loads(f.readline())["error"]["code"] in ("too_large", "bad_request")
        assert f.readline() == b""
        s.close()
    assert other.call("status")
    other.close()


def test_payloads_shorter_or_longer_than_declared(server):
    s, f = _raw(server.path)
    s.sendall(b'{"v":1,"id":1,"cmd":"predict","shape":[2,2],"dtype":"uint8","bytes":4}\n' + b"abcd" + b"xyz\n")
    assert json.loads(f.readline())["id"] == 1                      # exactly 4 bytes were the payload ...
    extra = json.loads(f.readline())                                # ... the rest is a (bad) next line
    assert extra["ok"] is False and extra["id"] is None
    s.sendall(b'{"v":1,"id":2,"cmd":"status"}\n')
    assert json.loads(f.readline())["id"] == 2
    s.sendall(b'{"v":1,"id":3,"cmd":"predict","shape":[28,28],"dtype":"uint8","bytes":784}\n' + b"\0" * 100)
    s.shutdown(socket.SHUT_WR)                                      # the client gives up mid-payload
    reply = json.loads(f.readline())
    assert reply["id"] == 3 and "expected 784 payload bytes, got 100" in reply["error"]["message"]
    s.close()


def test_two_hundred_connections_get_busy_replies_and_others_still_served(server):
    held = [_raw(server.path) for _ in range(200)]
    busy = 0
    for _s, f in held[3:]:
        line = f.readline()
        busy += bool(line) and json.loads(line)["error"]["code"] == "busy"
    assert busy == 197
    s, f = held[0]
    s.sendall(b'{"v":1,"id":9,"cmd":"status"}\n')                 # the admitted ones are served
    assert json.loads(f.readline())["id"] == 9
    for s, f in held:
        f.close()
        s.close()
    wait_until(lambda: _served(server.path), what="the closed connections' slots to be free again")


def test_connection_cap(tmp_path):
    srv = ControlServer(tmp_path / "s.sock", max_connections=1, idle_timeout=WAIT_S)
    srv.register("status", lambda req, _: {})
    srv.start()
    try:
        s1, f1 = _raw(srv.path)
        s1.sendall(b'{"v":1,"id":1,"cmd":"status"}\n')
        assert json.loads(f1.readline())["id"] == 1                 # admitted: it holds the one slot
        s2, f2 = _raw(srv.path)
        assert json.loads(f2.readline())["error"]["code"] == "busy"
        assert f2.readline() == b""
        f1.close()
        s1.close()                                                  # the holder leaves: its slot is free
        wait_until(lambda: _served(srv.path), what="the slot to be free again")
    finally:
        srv.stop()


def test_an_idle_connection_is_closed_and_frees_its_slot(tmp_path):
    srv = ControlServer(tmp_path / "s.sock", max_connections=1, idle_timeout=0.3)
    srv.register("status", lambda req, _: {})
    srv.start()
    try:
        t0 = time.monotonic()                                       # before the server can start its timer
        s1, f1 = _raw(srv.path)
        assert f1.readline() == b""                                 # idle: closed by the server ...
        assert time.monotonic() - t0 >= 0.25                        # ... after its idle timeout, not at once
        wait_until(lambda: _served(srv.path), what="the slot to be free again")
    finally:
        srv.stop()


def test_one_instance_and_stale_sockets(tmp_path):
    path = tmp_path / "ocap.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))                                           # left behind by a crash
    stale.close()
    first = ControlServer(path)
    first.register("status", lambda req, _: {"n": 1})
    first.start()
    try:
        with pytest.raises(ServiceError, match="already running"):
            ControlServer(path).start()
        with Client(path) as c:
            assert c.call("status") == {"n": 1}
    finally:
        first.stop()
    assert not path.exists()
    with pytest.raises(Unreachable, match="ocap.sock"):
        Client(path)
    (tmp_path / "f.sock").write_text("not a socket")
    with pytest.raises(ServiceError, match="not a socket"):
        ControlServer(tmp_path / "f.sock").start()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_mutating_commands_check_peer_credentials():
    import shutil
    import tempfile

    d = tempfile.mkdtemp()                        # pytest's own tmp dirs are closed to other users
    os.chmod(d, 0o755)
    srv = ControlServer(os.path.join(d, "ocap.sock"))
    srv.register("status", lambda req, _: {})
    srv.register("pause", lambda req, _: {"paused": True})
    srv.start()
    os.chmod(str(srv.path), 0o666)                # let the other user reach the socket at all
    try:
        pid = os.fork()
        if pid == 0:                              # child: become nobody, try a read and a mutation
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                with Client(srv.path) as c:
                    c.call("status")
                    try:
                        c.call("pause")
                    except CommandFailed as e:
                        code = 0 if e.code == "forbidden" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        srv.stop()
        shutil.rmtree(d)


def test_stop_finishes_the_request_in_flight_and_closes_idle_connections(tmp_path, monkeypatch):
    """stop() used to return while connection threads still ran: a request being handled finished
    after it (in the server: counted after the class log's last flush, so lost), and an idle client
    kept its connection until its idle timeout."""
    import ocap_service.control_socket as control_socket

    monkeypatch.setattr(control_socket, "STOP_GRACE", 10 * WAIT_S)    # stop() waits for the handler, however slow
    srv = ControlServer(tmp_path / "s.sock", idle_timeout=10 * WAIT_S)
    started, done, replies, at_return = threading.Event(), [], [], []

    def slow(req, _):
        started.set()
        time.sleep(1.0)                     # the behaviour under test: a request still being handled at stop()
        done.append(req["id"])
        return {"done": True}

    def stop():
        srv.stop()
        at_return.append(list(done))        # what the handler had finished when stop() returned

    srv.register("status", slow)
    srv.start()
    idle, idle_f = _raw(srv.path)
    busy = threading.Thread(target=lambda: replies.append(Client(srv.path, timeout=10 * WAIT_S).call("status")))
    busy.start()
    assert started.wait(WAIT_S)
    stopper = threading.Thread(target=stop)
    stopper.start()
    assert idle_f.readline() == b""                       # stop() closed the idle connection, not its timeout
    stopper.join(10 * WAIT_S)
    assert at_return == [[1]]                             # stop() returned after the handler had finished ...
    busy.join(WAIT_S)
    assert replies == [{"done": True}]                    # ... and the request in flight was answered
    idle.close()


def test_only_declared_commands_take_handlers(tmp_path):
    """One table (ocap_service/commands.py): a handler for a name it does not declare is refused, naming the
    file; what a command needs (payload, rights) comes from the table, not from the registration."""
    srv = ControlServer(tmp_path / "s.sock")
    with pytest.raises(ServiceError, match=r"no control command 'slow' is declared in ocap_service/commands.py"):
        srv.register("slow", lambda req, _: {})
    srv.register("forget-samples", lambda req, _: {})
    assert srv.commands["forget-samples"].spec.mutating and not srv.commands["forget-samples"].spec.payload
