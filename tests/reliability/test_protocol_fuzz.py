"""Protocol fuzzing against a real ``python -m ocap_service`` process: 10,000 (CI) or more random headers, payloads and
garbage lines (hypothesis). Each gets exactly one reply, an error unless the request was valid, the
connection lives on, the server stays up, and its memory does not grow."""

import json
import os
import socket

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocap_daemon.launch import start_daemon

pytestmark = pytest.mark.slow       # a live server under 10,000 hostile frames

EXAMPLES = int(os.environ.get("OCAP_FUZZ_EXAMPLES", "10000"))       # ocap bench reliability: 50,000


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    sock = d / "s.sock"
    args = ["ocap_service", "--state-dir", str(d / "state"), "--socket", str(sock), "--log-level", "ERROR"]
    daemon = start_daemon(args, sock, d / "service.log")
    yield {"sock": sock, "proc": daemon.proc, "rss": []}
    assert daemon.stop(timeout=30) == 0


_headers = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None]), "id": st.none() | st.integers() | st.text(max_size=4),
     "cmd": st.sampled_from(["predict", "predict", "status", "classes", "history", "models", "reboot", ""])},
    optional={"shape": st.lists(st.integers(-3, 40) | st.booleans() | st.text(max_size=2), max_size=4),
              "dtype": st.sampled_from(["uint8", "float32", "", 3]),
              "minutes": st.integers(-5, 10 ** 6) | st.text(max_size=3), "limit": st.integers(-5, 20000) | st.none(),
              "origin": st.sampled_from(["served", "teacher", "both", 1])})
_garbage = st.binary(min_size=1, max_size=300).filter(lambda b: b.replace(b"\n", b" ").strip())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=_headers, payload=st.binary(max_size=3000), garbage=st.none() | _garbage)
def one_frame(live, header, payload, garbage):
    """Any header, any payload (announced with its true length, as the protocol frames it) or a line of
    garbage (blank lines get no reply, by design)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(live["sock"]))
        f = s.makefile("rb")
        if garbage is not None:
            s.sendall(garbage.replace(b"\n", b" ") + b"\n")
        elif header["cmd"] == "predict":
            s.sendall(json.dumps(dict(header, bytes=len(payload))).encode() + b"\n" + payload)
        else:
            s.sendall(json.dumps(header).encode() + b"\n")
        reply = json.loads(f.readline())
        if reply["ok"]:
            assert garbage is None and header["v"] == 1
            if header["cmd"] == "predict":
                assert 0 <= reply["result"]["class_id"] < 10 and len(payload) == 784
        else:
            assert reply["error"]["code"] in ("bad_request", "unknown_command", "too_large")
        s.sendall(b'{"v":1,"id":"after","cmd":"status"}\n')
        assert json.loads(f.readline())["id"] == "after"
        f.close()
    live["rss"].append(psutil.Process(live["proc"].pid).memory_info().rss)


def test_random_frames_get_one_reply_each_the_server_stays_up_and_its_memory_does_not_grow(live):
    """The cases, then RSS over the last half of them vs the first tenth (one test: the server, its
    memory readings and the verdict on them belong to one worker)."""
    one_frame(live)
    rss = live["rss"]
    assert len(rss) >= EXAMPLES // 2, len(rss)
    early = max(rss[len(rss) // 10: len(rss) // 5])
    late = max(rss[len(rss) // 2:])
    assert late <= early * 1.05 + 4 * 2 ** 20, (early / 2 ** 20, late / 2 ** 20)
    assert live["proc"].poll() is None
