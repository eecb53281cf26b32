"""Memory of the serving plane (issue 15): a large batch runs through onnxruntime a bounded chunk at a
time with the same answers, and a model swapped out is released as soon as nothing serves it, by
reference counting alone (no garbage collection needed)."""

import dataclasses
import gc
import weakref

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.package import resolve_model
from ocap_service.model_slot import PREDICT_CHUNK, load_model
from ocap_service.server import ServerConfig, build_server


@pytest.fixture(scope="module")
def frames():
    return load_dataset("fashion-mnist", "test").x[:200]


class RecordingSession:
    """An onnxruntime session that records the batch size of every run."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def test_a_large_batch_runs_in_bounded_chunks_with_the_answers_of_single_frames(frames):
    base = load_model("fmnist-cnn")
    rec = RecordingSession(base.session)
    model = dataclasses.replace(base, session=rec)
    x = frames[:3 * PREDICT_CHUNK + 5]
    whole = model.predict(x)
    assert rec.batches == [PREDICT_CHUNK] * 3 + [5]
    single = [base.predict(f) for f in x]
    assert whole.class_ids.tolist() == [int(p.class_ids[0]) for p in single]
    np.testing.assert_allclose(whole.probs, np.concatenate([p.probs for p in single]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(whole.features, np.concatenate([p.features for p in single]), rtol=1e-4, atol=1e-5)
    rec.batches.clear()
    assert model.predict(x[:PREDICT_CHUNK]).class_ids.tolist() == whole.class_ids[:PREDICT_CHUNK].tolist()
    assert rec.batches == [PREDICT_CHUNK]


def test_a_swapped_out_model_is_released_without_the_garbage_collector(tmp_path, frames):
    srv = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock", ServerConfig(teacher_share=0.5))
    srv.start()
    gc.collect()
    gc.disable()
    try:
        assert srv.swap(str(resolve_model("fmnist-vgg")), why="test")[0]
        pruned = weakref.ref(srv.served.session)
        for x in frames[:20]:
            srv.infer(x[None])          # teacher checks queue frames, not the model that answered them
        assert srv.wait_idle()
        srv._status({}, None)
        assert srv.revert_to_base("test")[0]
        assert pruned() is None, [type(r).__name__ for r in gc.get_referrers(pruned())]
        assert srv.swap(str(tmp_path / "no-such-package"), why="test")[0] is False
        assert srv.swap(str(resolve_model("fmnist-vgg")), why="test")[0]
        again = weakref.ref(srv.served.session)
        assert srv.swap(str(resolve_model("fmnist-cnn")), why="test")[0]        # a fresh base session
        assert again() is None and srv.served is srv.base
    finally:
        gc.enable()
        srv.stop()
