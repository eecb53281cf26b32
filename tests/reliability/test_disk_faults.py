"""Disk trouble while ocapd runs a cycle: a full disk (ENOSPC) or an I/O error (EIO) injected at the
file layer (test-only OCAP_FAULTS: such failures cannot be caused at an exact write otherwise). The
daemon keeps serving every request, records an event, and a personalization fails cleanly."""

import pytest

from ocap_core.data import load_dataset
from ocap_daemon.launch import wait_until
from ocap_daemon.store import ModelStore
from tests.ocap_daemon.test_ocapd import ONE_STEP, ctl, events, feed, start, wait_event, write_ini

pytestmark = [pytest.mark.torch, pytest.mark.slow]
CASES = [
    ("cache.file_written=enospc@4", "cache_write_failed", "No space left"),
    ("classlog.flush=error@4", "flush_failed", "I/O error"),
    ("policy.samples_written=enospc", "personalize_failed", "No space left"),
    ("store.copied=enospc", "deploy_failed", "No space left"),
    ("store.current.tmp_written=error", "deploy_failed", "I/O error"),
]


@pytest.mark.parametrize("fault,kind,says", CASES, ids=[c[0] for c in CASES])
def test_serving_goes_on_through_a_disk_fault(tmp_path, fault, kind, says):
    test = load_dataset("fashion-mnist", "test")
    daemon = start(tmp_path, write_ini(tmp_path, personalize=ONE_STEP), OCAP_FAULTS=fault)
    replay = feed(tmp_path, {k: test.x[test.y == k][:400] for k in range(10)})
    try:
        ev = wait_event(tmp_path, kind, 120)
        assert says in str(ev), ev
        before = ctl(tmp_path, "status")["requests"]
        wait_until(lambda: daemon.request("status")["requests"] > before + 100, 60, "100 more answers")  # still serving
        st = ctl(tmp_path, "status")
        assert daemon.running()
        if kind in ("personalize_failed", "deploy_failed"):
            assert st["model"]["version"] == st["base"] and st["daemon"]["worker"] is None
            assert st["daemon"]["phase"] == "observing"
            jobs = tmp_path / "state" / "jobs"
            assert not jobs.exists() or not list(jobs.iterdir())
            store = ModelStore(tmp_path / "state")
            assert store.current() is None
            assert not [p for p in (tmp_path / "state" / "models").iterdir() if p.name.startswith(".tmp-")]
    finally:
        replay.stop()
        assert daemon.stop() == 0
    assert not [r for r in replay.log if not r[4]]                         # no request failed
    assert kind in [k for k, _ in events(tmp_path)]
