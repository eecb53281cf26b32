"""The controller's policy and the deployer's deployments on a real ``Server`` (real onnxruntime
sessions, SQLite, sample cache, Unix socket) driven by an injected clock: no sleeps, no timing.

The personalization worker is a stand-in: the real one (a torch subprocess of minutes) is tested in
test_worker.py; here it only hands back a real candidate the engine made (``pruned_1_8``, checked in),
fails or crashes. Torch-free: the policy's tests run on Python 3.8 too."""

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import read_card, resolve_model
from ocap_daemon import gate, precision
from ocap_daemon.config import Config
from ocap_daemon.controller import Controller
from ocap_daemon.deployer import Phase
from ocap_daemon.main import control_plane, server_config
from ocap_daemon.store import ModelStore
from ocap_service.client import Client, CommandFailed
from ocap_service.server import Server, build_server

T0 = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class StandInWorker:
    """WorkerRun's interface without the subprocess; the test says when and how it ends."""

    started = []

    def __init__(self, job, job_dir, nice=19, threads=None, budget_s=0.0, wall_limit_s=0.0, on_event=None) -> None:
        self.job, self.job_dir = job, Path(job_dir)
        self.limits = {"nice": nice, "budget_s": budget_s, "wall_limit_s": wall_limit_s}
        self.state, self.reason, self.result, self.elapsed, self.last = "running", "", None, 0.0, {}
        self.note = ""                            # WorkerRun's waiting note; a test sets one
        self.proc = type("P", (), {"pid": 4242})()
        self._end = None
        StandInWorker.started.append(self)

    def finish(self, candidate: Path, int8: Optional[Path] = None) -> None:
        out = Path(self.job.out)
        shutil.copytree(str(candidate), str(out))
        self._end = ("done", {"candidate": str(out), "version": read_card(out).version})
        if int8 is not None:                     # as the worker does with quantize = int8
            shutil.copytree(str(int8), self.job.int8_out)
            self._end[1]["int8"] = {"candidate": self.job.int8_out, "version": read_card(Path(self.job.int8_out)).version}

    def fail(self, reason: str) -> None:
        self._end = ("failed", None)
        self.reason = reason

    def crash(self, signal: str, stage: str) -> None:
        """As WorkerRun reports a worker that died of ``signal`` in ``stage``."""
        self._end = ("crashed", None)
        self.signal, self.stage = signal, stage
        self.reason = f"worker killed by {signal} in stage {stage}"

    def poll(self):
        if self._end is not None:
            self.state, self.result = self._end
            return self.state
        return None

    def pause(self, why: str) -> bool:
        self.state = "paused"
        return True

    def resume(self) -> bool:
        self.state = "running"
        return True

    def kill(self, why: str) -> None:
        self.state = "killed"

    def describe(self):
        return {"state": self.state}


@dataclasses.dataclass
class Rig:
    cfg: Config
    server: Server
    store: ModelStore
    ctl: Controller
    clock: Clock
    test: object

    def feed(self, classes, n: int, offset: int = 0) -> None:
        """``n`` test images of ``classes`` through the one inference path, then wait for the
        background thread (cache offers, teacher checks)."""
        x = self.test.x[np.isin(self.test.y, classes)][offset:offset + n]
        for i in range(0, len(x), 25):
            self.server.infer(x[i:i + 25])
        assert self.server.wait_idle(60)

    def observe_stable(self, classes=(1, 8)) -> None:
        for _ in range(self.cfg.stability.windows):
            self.feed(list(classes), 150)
            self.clock.advance(self.cfg.stability.window)

    def worker(self) -> StandInWorker:
        assert isinstance(self.ctl.worker, StandInWorker), (self.ctl.status_line(), self.ctl.trigger.evaluate()[1])
        return self.ctl.worker

    def events(self, kind: str):
        """The details of the events of ``kind``, newest first."""
        return [e["detail"] for e in self.server.events.recent(100, kinds=[kind])]

    def call(self, cmd: str, **args):
        with Client(self.cfg.daemon.socket) as c:
            return c.call(cmd, **args)


def _config(state: Path) -> Config:
    c = Config.defaults()
    r = dataclasses.replace
    return r(c, daemon=r(c.daemon, state_dir=state, cache_dir=state / "cache", socket=state / "ctl.sock"),
             stability=r(c.stability, window=10.0, windows=2, min_predictions=50),
             # the resource guard has its own tests (test_telemetry.py): this machine's load must not decide here
             personalize=r(c.personalize, rule="personalize", min_samples_per_class=8, cooldown=60.0,
                           max_serving_p99=1e9, min_free_memory=0, max_temperature=1e9),
             gate=r(c.gate, min_agreement=0.9, min_speedup=1.0, latency_runs=20),
             drift=r(c.drift, teacher_share=1.0, window=10.0, min_checks=20, cooldown=60.0),
             probation=r(c.probation, duration=30.0))


@pytest.fixture(scope="module")
def test_images():
    return load_dataset("fashion-mnist", "test")


@pytest.fixture
def rig(test_images):
    state = Path(tempfile.mkdtemp(prefix="ocap-ctl-"))       # short: a Unix socket path has ~100 bytes
    cfg = _config(state)
    clock = Clock()
    base = str(resolve_model("fmnist-cnn"))
    server = build_server(base, state, cfg.daemon.socket, server_config(cfg), clock=clock)
    store = ModelStore(state, keep_versions=cfg.store.keep_versions)
    StandInWorker.started = []
    ctl = control_plane(cfg, server, store, clock=clock, start_worker=StandInWorker)
    server.start()
    yield Rig(cfg, server, store, ctl, clock, test_images)
    ctl.stop()
    server.stop()
    shutil.rmtree(str(state), ignore_errors=True)


@pytest.fixture
def deployed(rig, pruned_1_8, monkeypatch):
    """The rig after the whole loop: stable {1, 8}, worker done, gate passed, candidate on probation.
    Returns the gate's verdict, to check that what serves is the model the gate loaded."""
    verdicts = []
    real_check = gate.check

    def check(*args, **kwargs):
        verdicts.append(real_check(*args, **kwargs))
        return verdicts[-1]

    monkeypatch.setattr(gate, "check", check)     # a spy: the real gate runs
    rig.observe_stable()
    rig.ctl.tick()
    rig.worker().finish(pruned_1_8)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.PROBATION, rig.ctl.status_line()
    return verdicts[0]


def test_the_trigger_waits_for_stability_then_starts_a_worker_on_the_classes(rig):
    rig.feed([1, 8], 150)
    ok, why, _ = rig.ctl.trigger.evaluate()
    assert not ok and "window" in why                        # one window so far, two needed
    rig.ctl.tick()
    assert rig.ctl.worker is None and rig.ctl.phase is Phase.OBSERVING
    rig.observe_stable()
    rig.ctl.tick()
    w = rig.worker()
    assert Path(w.job.base).is_absolute() and Path(w.job.base) == Path(rig.server.base.path).resolve()
    p = rig.cfg.personalize
    assert w.limits == {"nice": p.nice, "budget_s": p.time_budget, "wall_limit_s": p.wall_limit}
    assert w.job.classes == (1, 8) and set(w.job.class_freqs) == {1, 8} and w.job.rule == "personalize"
    with np.load(w.job.samples) as z:
        assert len(z["x"]) == len(z["is_val"]) > 0
    assert rig.ctl.phase is Phase.PERSONALIZING and "worker running" in rig.ctl.status_line()
    w.note = " (kept waiting: 3 s of CPU in 300 s)"
    assert "worker running (kept waiting: 3 s of CPU in 300 s)" in rig.ctl.status_line()
    assert [e["classes"] for e in rig.events("personalize_started")] == [[1, 8]]


def test_the_search_waits_for_enough_held_back_images(rig):
    rig.ctl.cfg = dataclasses.replace(rig.cfg, personalize=dataclasses.replace(rig.cfg.personalize, rule="search"))
    rig.observe_stable()
    ok, why, _ = rig.ctl.trigger.evaluate()
    floor, target = rig.ctl.trigger.held_back_needed(2)
    assert not ok and f"/{floor} held-back samples of {{1,8}}" in why, why
    rig.ctl.tick()
    assert "waiting: cache holds" in rig.ctl.status_line()


@pytest.mark.parametrize("max_loss,per_class,classes", [(1.0, 256, 3), (1.0, 32, 2), (2.0, 256, 2), (0.5, 128, 3)])
def test_held_back_needed_shows_half_the_budget_as_far_as_the_reservoir_holds(rig, max_loss, per_class, classes):
    from ocap_core.agreement import judged_images_needed
    from ocap_core.selection import val_capacity

    p = dataclasses.replace(rig.cfg.personalize, rule="search", max_loss=max_loss, samples_per_class=per_class)
    rig.ctl.cfg = dataclasses.replace(rig.cfg, personalize=p)
    floor, target = rig.ctl.trigger.held_back_needed(classes)
    assert floor == 2 * judged_images_needed(max_loss) <= target <= 2 * judged_images_needed(max_loss / 2)
    assert target == 2 * judged_images_needed(max_loss / 2) or target == max(floor, classes * val_capacity(per_class))


def test_above_the_floor_the_trigger_waits_for_the_target_one_stability_span_at_most(rig):
    p = dataclasses.replace(rig.cfg.personalize, rule="search", max_loss=25.0, samples_per_class=256)
    rig.ctl.cfg = dataclasses.replace(rig.cfg, personalize=p)
    floor, target = rig.ctl.trigger.held_back_needed(2)
    rig.observe_stable()
    held = sum(rig.server.cache.counts()["val"].get(k, 0) for k in (1, 8))
    assert floor <= held < target, (floor, held, target)        # 25 points: a floor of a few dozen images
    ok, why, _ = rig.ctl.trigger.evaluate()
    assert not ok and f"{held}/{target} held-back samples" in why, why
    assert "going ahead with fewer once none arrive for 20 s, in 80 s at the latest" in why, why
    rig.observe_stable()        # one stability span later, the same images again: no new held-back ones
    assert sum(rig.server.cache.counts()["val"].get(k, 0) for k in (1, 8)) < target
    ok, why, _ = rig.ctl.trigger.evaluate()
    assert ok, why


def test_while_held_back_images_still_arrive_the_trigger_waits_up_to_four_spans(rig):
    p = dataclasses.replace(rig.cfg.personalize, rule="search", max_loss=25.0, samples_per_class=256)
    rig.ctl.cfg = dataclasses.replace(rig.cfg, personalize=p)
    floor, target = rig.ctl.trigger.held_back_needed(2)
    span = rig.cfg.stability.window * rig.cfg.stability.windows
    rig.observe_stable()

    def held():
        return sum(rig.server.cache.counts()["val"].get(k, 0) for k in (1, 8))

    ok, why, _ = rig.ctl.trigger.evaluate()                # the floor is reached now: the wait starts
    assert not ok and f"in {4 * span:.0f} s at the latest" in why, why
    waited, offset, deadlines = 0.0, 300, []
    while True:                 # a few new held-back images every window: each restarts the span ...
        before = held()
        rig.feed([1, 8], 150)                               # seen before: the set stays stable
        while held() == before:
            rig.feed([1, 8], 4, offset=offset)
            offset += 4
        assert held() < target, (held(), target)
        rig.clock.advance(rig.cfg.stability.window)
        waited += rig.cfg.stability.window
        ok, why = rig.ctl.trigger.evaluate()[:2]
        if ok:
            break
        assert waited < 4 * span and "held-back samples" in why, (waited, why)
        assert f"none arrive for {span:.0f} s," in why, why                   # the span restarted ...
        deadlines.append(float(why.split(" s at the latest")[0].rsplit(" ", 1)[1]))
    assert waited >= 4 * span - 1e-9, waited            # ... up to four spans after the floor, then go
    # the deadline said counts down with the clock, whatever arrives (it reset with every image)
    assert deadlines == [4 * span - rig.cfg.stability.window * (i + 1) for i in range(len(deadlines))], deadlines


def test_a_gated_candidate_serves_the_session_the_gate_loaded_and_passes_probation(rig, deployed):
    version = deployed.model.version
    served = rig.server.slot.current()
    assert served.version == version and served.session is deployed.model.session      # one load
    assert rig.store.current() == version and served.path == rig.store.get(version)
    assert rig.ctl.probation is not None and rig.ctl.probation.previous == rig.server.base.version
    rig.feed([1, 8], 100, offset=300)
    rig.clock.advance(1)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.PROBATION                    # the figures pass, the duration has not
    rig.clock.advance(rig.cfg.probation.duration)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.PERSONALIZED and rig.ctl.probation is None
    assert rig.store.last_good() == version and len(rig.events("probation_passed")) == 1


def test_probation_fails_on_disagreement_and_rolls_back_to_the_base(rig, deployed):
    rig.ctl.cfg = dataclasses.replace(rig.cfg, probation=dataclasses.replace(rig.cfg.probation, max_disagreement=0.0))
    teacher = rig.server.base.predict(rig.test.x).class_ids
    student = deployed.model.predict(rig.test.x).class_ids
    odd = np.flatnonzero(np.isin(teacher, [1, 8]) & (student != teacher))
    assert len(odd), "the candidate agrees with the base model on every test image"
    for i in odd[:5]:
        rig.server.infer(rig.test.x[i:i + 1])
    rig.feed([1, 8], 50, offset=300)
    rig.clock.advance(1)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.OBSERVING and rig.server.slot.current() is rig.server.base
    assert rig.store.current() is None and "probation failed: disagreement" in rig.ctl.last_outcome
    assert len(rig.events("probation_failed")) == 1 and rig.events("rollback")[0]["to"] == rig.server.base.version


def test_drift_reverts_to_the_base_and_stability_starts_over(rig, deployed):
    rig.feed([0, 2], 60)
    rig.clock.advance(1)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.OBSERVING and rig.server.slot.current() is rig.server.base
    assert rig.store.current() is None and rig.ctl.trigger.observe_since == rig.clock()
    assert "classes outside the kept set" in rig.events("drift")[0]["reason"]
    ok, why, _ = rig.ctl.trigger.evaluate(force=False)
    assert not ok


def test_a_failed_worker_is_an_event_and_a_cooldown(rig):
    rig.observe_stable()
    rig.ctl.tick()
    rig.worker().fail("engine exploded")
    rig.ctl.tick()
    assert rig.ctl.worker is None and rig.ctl.phase is Phase.OBSERVING
    assert rig.events("personalize_failed")[0]["reason"] == "engine exploded"
    assert "engine exploded" in rig.ctl.status_line() and "next try in 60 s" in rig.ctl.status_line()
    assert not StandInWorker.started[0].job_dir.exists()          # the scratch is gone
    ok, why, _ = rig.ctl.trigger.evaluate()
    assert not ok and why.startswith("cooling down")


def test_worker_crashes_back_off_doubling_then_hold_until_forced(rig):
    """A worker that dies of a signal (a native crash) would die the same way on the same job: each crash
    in a row doubles the wait (the 60-s cooldown, then 120 s), the third holds personalization until
    ``ocapctl personalize --now``, and every step says so in the event and the status line."""
    from ocap_daemon.trigger import MAX_CRASHES

    rig.observe_stable()
    waits = []
    for n in range(1, MAX_CRASHES + 1):
        rig.ctl.tick()
        rig.worker().crash("SIGSEGV", "finetune")
        rig.ctl.tick()
        ev = rig.events("personalize_failed")[0]
        assert (ev["state"], ev["signal"], ev["stage"], ev["crashes"]) == ("crashed", "SIGSEGV", "finetune", n)
        assert "SIGSEGV in stage finetune" in ev["reason"]
        waits.append(ev["backoff_s"])
        if n < MAX_CRASHES:
            assert f"worker crash {n} in a row, backing off" in rig.ctl.status_line()
            ok, why, _ = rig.ctl.trigger.evaluate()
            assert not ok and "backing off after SIGSEGV in stage finetune" in why, why
            rig.clock.advance(ev["backoff_s"] + 1)
            rig.observe_stable()
    assert waits == [60, 120, 240]
    rig.clock.advance(waits[-1] + 1)
    rig.observe_stable()
    rig.ctl.tick()
    assert rig.ctl.worker is None                            # held, however long it waits
    ok, why, _ = rig.ctl.trigger.evaluate()
    assert not ok and why.startswith(f"personalization held after {MAX_CRASHES} worker crashes in a row"), why
    assert "ocapctl personalize --now" in rig.ctl.status_line()
    assert rig.call("status")["daemon"]["worker_crashes"] == {"in_a_row": MAX_CRASHES, "last": "SIGSEGV in stage finetune"}
    assert rig.call("personalize", now=True)["started"]      # a forced start tries again
    rig.worker().fail("engine exploded")                     # an ordinary end: the count starts over
    rig.ctl.tick()
    assert rig.ctl.trigger.crashes == 0 and "crash" not in rig.ctl.status_line()
    assert rig.call("status")["daemon"]["worker_crashes"] == {"in_a_row": 0, "last": ""}


def test_with_privacy_purge_the_cached_samples_go_once_the_worker_ends(rig):
    rig.ctl.cfg = dataclasses.replace(rig.cfg, privacy=dataclasses.replace(rig.cfg.privacy, after_personalize="purge"))
    rig.observe_stable()
    rig.ctl.tick()
    held = sum(n for split in rig.server.cache.counts().values() for n in split.values())
    assert held > 0
    rig.worker().fail("engine exploded")            # purged whatever the outcome
    rig.ctl.tick()
    assert rig.server.cache.counts() == {"train": {}, "val": {}}
    assert rig.events("samples_forgotten")[0]["samples"] == held


def test_the_gate_refusing_leaves_the_base_serving(rig, pruned_1_8):
    rig.ctl.cfg = dataclasses.replace(rig.cfg, gate=dataclasses.replace(rig.cfg.gate, min_speedup=50.0))
    rig.observe_stable()
    rig.ctl.tick()
    rig.worker().finish(pruned_1_8)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.OBSERVING and rig.server.slot.current() is rig.server.base
    assert rig.store.current() is None and "as fast as the served model" in rig.ctl.last_outcome
    assert rig.events("gate")[0]["passed"] is False


def test_tensorrt_engines_of_models_that_cannot_serve_again_are_removed(rig, pruned_1_8):
    """This machine has no TensorRT: its engine directories are stand-ins, made where it makes them."""
    root = Path(rig.server.load_args()["trt_cache_dir"])
    gone, stored = "fmnist-cnn-rejected", read_card(pruned_1_8).version
    for version in (rig.server.base.version, stored, gone):
        (root / version).mkdir(parents=True)
    rig.observe_stable()
    rig.ctl.tick()
    rig.worker().finish(pruned_1_8)
    rig.ctl.tick()                                   # deployed and stored: its engines stay
    assert rig.ctl.phase is Phase.PROBATION, rig.ctl.status_line()
    assert sorted(p.name for p in root.iterdir()) == sorted([rig.server.base.version, stored])


@pytest.fixture(scope="module")
def pruned_1_8_int8(pruned_1_8, tmp_path_factory, test_images):
    """The INT8 child of ``pruned_1_8``, as the worker makes it (needs the onnx package: the torch extra)."""
    from ocap_core.package import open_package
    from ocap_core.quantize import QuantSpec, quantize_package

    frames = test_images.x[np.isin(test_images.y, [1, 8])][-64:]          # not the frames the rig feeds
    out = tmp_path_factory.mktemp("int8") / "cand-int8"
    return quantize_package(open_package(str(pruned_1_8)), frames, out, QuantSpec(calibration=64)).path


@pytest.mark.torch                     # the INT8 child needs the onnx package (the torch extra)
@pytest.mark.parametrize("min_speedup,kept", [(0.0, True), (1e9, False)])
def test_with_quantize_int8_the_int8_child_serves_only_when_the_precision_rule_keeps_it(
        rig, pruned_1_8, pruned_1_8_int8, monkeypatch, min_speedup, kept):
    # the speed half of the rule is measured on the machine (test_precision.py): here it is set, so that
    # this machine's load does not decide which branch runs
    monkeypatch.setattr(precision, "MIN_SPEEDUP", min_speedup)
    loads = []

    def counted(module):
        real = module.load_model

        def load(path, **kwargs):
            loads.append(Path(path).name)
            return real(path, **kwargs)
        monkeypatch.setattr(module, "load_model", load)          # a spy: the real load runs
    counted(precision)
    counted(gate)
    rig.ctl.cfg = dataclasses.replace(rig.cfg, personalize=dataclasses.replace(rig.cfg.personalize, quantize="int8"))
    rig.observe_stable()
    rig.ctl.tick()
    assert rig.worker().job.quantize == "int8"
    rig.feed([1, 8], 400, offset=300)           # more held-back frames than the INT8 check needs (32)
    rig.worker().finish(pruned_1_8, pruned_1_8_int8)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.PROBATION, rig.ctl.status_line()
    [event] = rig.events("int8")
    assert event["kept"] is kept and event["frames"] > 0 and event["agreement"] >= 0.98, event
    int8_version, fp32_version = read_card(pruned_1_8_int8).version, read_card(pruned_1_8).version
    served = rig.server.slot.current()
    assert served.version == (int8_version if kept else fp32_version) and rig.store.current() == served.version
    assert ("quantization" in served.card.provenance) is kept           # the deployed card says it
    assert len(rig.events("gate")) == 1 and rig.events("gate")[0]["version"] == served.version
    assert rig.events("personalize_finished")[0]["int8"]["version"] == int8_version
    if not kept:
        assert "as fast as its FP32 parent here" in event["reason"]
    assert sorted(loads) == ["candidate", "candidate-int8"], loads      # each directory loaded once


def test_commands_personalize_pause_resume_and_rollback(rig, pruned_1_8):
    with pytest.raises(CommandFailed) as e:
        rig.call("personalize")
    assert e.value.code == "not_ready"
    assert rig.call("personalize", dry_run=True)["would_start"] is False
    rig.observe_stable()
    assert rig.call("personalize", dry_run=True)["would_start"] is True
    assert rig.call("personalize")["started"] is True
    with pytest.raises(CommandFailed) as e:
        rig.call("personalize")
    assert e.value.code == "busy"
    assert rig.call("pause") == {"paused": True} and rig.worker().state == "paused"
    rig.ctl.tick()
    assert rig.ctl.worker is not None                         # paused: the tick starts nothing new
    assert rig.call("resume") == {"paused": False} and rig.worker().state == "running"
    rig.worker().finish(pruned_1_8)
    rig.ctl.tick()
    assert rig.ctl.phase is Phase.PROBATION
    assert rig.call("rollback") == {"serving": rig.server.base.version}      # no last_good yet: the base
    assert rig.ctl.phase is Phase.OBSERVING and rig.store.current() is None


def test_rollback_goes_to_last_good_when_another_model_serves(rig, deployed):
    version = deployed.model.version
    rig.feed([1, 8], 100, offset=300)
    rig.clock.advance(rig.cfg.probation.duration + 1)
    rig.ctl.tick()
    assert rig.store.last_good() == version
    rig.ctl.revert("test")                                    # base serves; last_good is the candidate
    assert rig.call("rollback") == {"serving": version}
    assert rig.server.slot.current().version == version and rig.store.current() == version
    assert rig.ctl.phase is Phase.PERSONALIZED


def test_the_daily_cap_holds_when_the_start_events_were_not_written(rig, monkeypatch):
    """A fake for a fault this test cannot cause alone: a disk that fails only the events' writes (the
    daemon logs and goes on). The cap counted those events, so every start went uncounted."""
    rig.ctl.cfg = dataclasses.replace(rig.cfg, personalize=dataclasses.replace(rig.cfg.personalize, daily_cap=1))
    real = rig.server.events.record
    monkeypatch.setattr(rig.server.events, "record",
                        lambda kind, **d: {"kind": kind} if kind == "personalize_started" else real(kind, **d))
    rig.observe_stable()
    rig.ctl.tick()
    rig.worker().fail("test")
    rig.ctl.tick()
    assert rig.ctl.worker is None and rig.events("personalize_started") == []
    rig.clock.advance(rig.cfg.personalize.cooldown + 1)
    rig.observe_stable()
    ok, why, _ = rig.ctl.trigger.evaluate()
    assert not ok and "daily cap of 1" in why, why
