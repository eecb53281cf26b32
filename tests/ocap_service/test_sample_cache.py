"""SampleCache on real Fashion-MNIST frames and features from the shipped CNN (torch-free): bounded
per-class buffers, private files indexed in SQLite, resume after restart, byte quota, forget."""

import stat

import numpy as np
import pytest

from ocap_core.data import load_dataset
from ocap_core.selection import val_capacity
from ocap_service.errors import ServiceError
from ocap_service.model_slot import load_model
from ocap_service.sample_cache import SampleCache


@pytest.fixture(scope="module")
def frames():
    x = load_dataset("fashion-mnist", "train").x[:800]
    pred = load_model("fmnist-cnn").predict(x)
    return x, pred


def _fill(cache, frames):
    x, pred = frames
    kept = [cache.offer(x[i], pred.features[i], int(pred.class_ids[i]), float(pred.confidence[i]))
            for i in range(len(x))]
    return sum(kept)


def test_buffers_are_bounded_private_and_indexed(tmp_path, frames):
    cache = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    assert _fill(cache, frames) > 0
    counts = cache.counts()
    assert set(counts["train"]) == set(np.unique(frames[1].class_ids).tolist())
    assert max(counts["train"].values()) == 12 and max(counts["val"].values()) <= val_capacity(12)
    files = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(files) == sum(counts["train"].values()) + sum(counts["val"].values())
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert cache.bytes == sum(f.stat().st_size for f in files)
    images, ids = cache.load("train")
    assert images.shape == (sum(counts["train"].values()), 28, 28, 1) and images.dtype == np.uint8
    assert sorted(np.unique(ids).tolist()) == sorted(counts["train"])


def test_a_frame_seen_again_is_not_a_new_sample(tmp_path, frames):
    x, pred = frames
    cache = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=64)
    for _ in range(6):                               # every frame six times, as a replay sends them
        for i in range(60):
            cache.offer(x[i], pred.features[i], int(pred.class_ids[i]), float(pred.confidence[i]))
    held = [img.tobytes() for split in ("train", "val") for img in cache.load(split)[0]]
    assert len(held) == len(set(held)) == 60                    # each image once, in one split only
    assert cache.declined_duplicates == 5 * 60 and all(cache.counts()[s] for s in ("train", "val"))
    cache.close()
    again = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=64)     # resumed: still known
    assert not again.offer(x[0], pred.features[0], int(pred.class_ids[0]), float(pred.confidence[0]))
    assert again.forget() == 60 and again.offer(x[0], pred.features[0], int(pred.class_ids[0]), 0.9)


@pytest.mark.parametrize("passes", [2, 5])
def test_what_the_cache_holds_after_many_passes_of_a_replay_is_what_one_pass_left(tmp_path, frames, passes):
    """The KL rule turns down most frames once a class's buffer is full; offered again in a later pass,
    a frame turned down could replace a sample, so the cache depended on how many passes had come when
    personalization began. A frame offered lately is declined, turned down or not (``SEEN_MAX``)."""
    x, pred = frames

    def held(n_passes, where):
        cache = SampleCache(where / "cache", where / "ocap.db", per_class=8)
        for _ in range(n_passes):
            _fill(cache, frames)
        out = {split: sorted(img.tobytes() for img in cache.load(split)[0]) for split in ("train", "val")}
        declined = cache.declined_duplicates
        cache.close()
        return out, declined

    (one, _), (many, declined) = held(1, tmp_path / "one"), held(passes, tmp_path / "many")
    assert one == many and sum(map(len, one.values())) < len(x)     # most of the first pass was turned down
    assert declined == (passes - 1) * len(x)


def test_a_restart_resumes_the_same_samples(tmp_path, frames):
    cache = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    _fill(cache, frames)
    before, files = cache.counts(), sorted((tmp_path / "cache").glob("*.npz"))
    cache.close()
    again = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    assert again.counts() == before and sorted((tmp_path / "cache").glob("*.npz")) == files


def test_a_resume_that_fails_half_way_keeps_the_whole_index(tmp_path, frames, monkeypatch):
    """Resuming deleted the index and wrote it back row by row: a crash half-way left files that no row
    named, so they were never offered again, counted against the quota or removed by ``forget``."""
    cache = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    _fill(cache, frames)
    before, files = cache.counts(), sorted((tmp_path / "cache").glob("*.npz"))
    cache.close()
    place, calls = SampleCache._place, []

    def dies_on_the_fifth(self, *args, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("the power went")
        return place(self, *args, **kw)

    monkeypatch.setattr(SampleCache, "_place", dies_on_the_fifth)
    with pytest.raises(OSError, match="power"):
        SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    monkeypatch.setattr(SampleCache, "_place", place)
    again = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    assert again.counts() == before and sorted((tmp_path / "cache").glob("*.npz")) == files
    assert again.forget() == len(files) and not list((tmp_path / "cache").glob("*.npz"))


def test_files_no_row_names_are_removed_at_start(tmp_path, frames):
    """A kill between a sample's file and its row (or a failed insert) left a file nothing would offer,
    count against the quota or forget; the next start removes it and keeps every indexed one."""
    cache = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    _fill(cache, frames)
    before, files = cache.counts(), sorted((tmp_path / "cache").glob("*.npz"))
    cache.close()
    (tmp_path / "cache" / "3-0123abcd.npz").write_bytes(files[0].read_bytes())
    (tmp_path / "cache" / ".3-4567cdef.npz.tmp").write_bytes(b"half written")
    again = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=12)
    assert again.counts() == before and sorted((tmp_path / "cache").iterdir()) == files


def test_the_byte_quota_is_never_exceeded_and_late_classes_get_room(tmp_path, frames):
    x, pred = frames
    quota = 60_000                                  # ~14 samples of 28x28 + 128 features
    cache = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=50, quota_bytes=quota)
    early = np.isin(pred.class_ids, [1, 8])
    late = np.flatnonzero(pred.class_ids == 3)
    sizes = []
    for i in list(np.flatnonzero(early)) + list(late):
        cache.offer(x[i], pred.features[i], int(pred.class_ids[i]), float(pred.confidence[i]))
        sizes.append(sum(f.stat().st_size for f in (tmp_path / "cache").glob("*.npz")))
    assert 0 < max(sizes) <= quota and cache.bytes == sizes[-1]
    assert cache.declined_for_quota > 0 and cache.evicted_for_quota > 0
    train = cache.counts()["train"]
    assert set(train) == {1, 3, 8} and max(train.values()) - min(train.values()) <= 2, train


def test_forget_deletes_everything(tmp_path, frames):
    cache = SampleCache(tmp_path / "cache", tmp_path / "ocap.db", per_class=8)
    n = _fill(cache, frames)
    assert cache.forget() > 0 and n > 0
    assert not list((tmp_path / "cache").glob("*.npz")) and cache.counts() == {"train": {}, "val": {}}
    assert cache.bytes == 0 and _fill(cache, frames) > 0       # and it fills again


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ServiceError, match="per_class"):
        SampleCache(tmp_path / "c", tmp_path / "ocap.db", per_class=0)
    with pytest.raises(ServiceError, match="unknown sample selector 'best'"):
        SampleCache(tmp_path / "c", tmp_path / "ocap.db", selector="best")
    with pytest.raises(ServiceError, match="split"):
        SampleCache(tmp_path / "c", tmp_path / "ocap.db").load("test")
