"""ModelStore on real packages: verified copies in, atomic pointers, start-up recovery and pruning."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from ocap_core.package import open_package, read_card, resolve_model, write_card
from ocap_daemon.errors import DaemonError
from ocap_daemon.store import ModelStore


def make_version(src: Path, dst: Path, version: str, created: str = "2026-01-01T00:00:00Z") -> Path:
    """A valid copy of ``src`` with another card version (the card is not hashed; its files are)."""
    shutil.copytree(str(src), str(dst))
    card = dataclasses.replace(read_card(dst), version=version, created=created)
    write_card(dst, card)
    open_package(str(dst))
    return dst


def corrupt(path: Path) -> None:
    """Truncate a package's model.onnx to half its size."""
    onnx = path / "model.onnx"
    data = onnx.read_bytes()
    os.chmod(str(onnx), 0o640)
    onnx.write_bytes(data[: len(data) // 2])


def listing(path: Path) -> list:
    return sorted(p.name for p in path.iterdir())


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "state")


@pytest.fixture
def version(package_copy):
    return read_card(package_copy).version


def test_store_creates_its_models_dir_private(tmp_path):
    s = ModelStore(tmp_path / "state")
    assert s.models == tmp_path / "state" / "models"
    assert s.models.stat().st_mode & 0o777 == 0o750
    assert s.versions() == [] and s.current() is None and s.last_good() is None


def test_keep_versions_must_be_positive(tmp_path):
    with pytest.raises(DaemonError, match="keep_versions"):
        ModelStore(tmp_path / "state", keep_versions=0)


def test_add_get_and_add_again_is_a_no_op(store, package_copy, version):
    path = store.add(package_copy)
    assert path == store.models / version
    assert store.get(version) == path
    assert open_package(str(path)).card.version == version
    assert store.versions() == [version]
    inode = path.stat().st_ino
    assert store.add(package_copy) == path
    assert path.stat().st_ino == inode
    assert listing(store.models) == [version]


def test_add_copies_only_the_card_and_its_files(store, package_copy, version):
    (package_copy / "notes.txt").write_text("not part of the package")
    path = store.add(package_copy)
    assert listing(path) == sorted(["card.json"] + list(read_card(package_copy).files))


def test_add_refuses_a_truncated_model(store, package_copy):
    corrupt(package_copy)
    with pytest.raises(DaemonError, match="sha256") as e:
        store.add(package_copy)
    assert str(package_copy) in str(e.value)
    assert listing(store.models) == []


def test_add_refuses_a_card_with_a_wrong_sha256(store, package_copy):
    data = json.loads((package_copy / "card.json").read_text())
    data["files"]["model.onnx"] = "0" * 64
    (package_copy / "card.json").write_text(json.dumps(data))
    with pytest.raises(DaemonError, match="sha256"):
        store.add(package_copy)
    assert listing(store.models) == []


def test_add_refuses_a_symlinked_package_dir(store, package_copy, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(package_copy, target_is_directory=True)
    with pytest.raises(DaemonError, match="symlink"):
        store.add(link)
    assert listing(store.models) == []


def test_add_refuses_a_symlink_inside_even_when_the_hashes_match(store, package_copy, tmp_path):
    real = tmp_path / "elsewhere.onnx"
    shutil.move(str(package_copy / "model.onnx"), str(real))
    (package_copy / "model.onnx").symlink_to(real)
    open_package(str(package_copy))  # the hashes alone would pass
    with pytest.raises(DaemonError, match="symlink"):
        store.add(package_copy)
    assert listing(store.models) == []


def test_add_refuses_a_card_version_that_is_a_path(store, package_copy, tmp_path):
    bad = make_version(package_copy, tmp_path / "bad", "../escape")
    with pytest.raises(DaemonError, match="plain name"):
        store.add(bad)
    assert listing(store.models) == [] and not (store.root / "escape").exists()


def test_add_replaces_a_corrupt_stored_version(store, package_copy, version):
    path = store.add(package_copy)
    corrupt(path)
    with pytest.raises(DaemonError, match="sha256"):
        store.get(version)
    assert store.add(package_copy) == path
    assert store.get(version) == path
    assert listing(store.models) == [version]


def test_add_replaces_a_partial_stored_version(store, package_copy, version):
    (store.models / version).mkdir()
    shutil.copy(str(package_copy / "card.json"), str(store.models / version))
    with pytest.raises(DaemonError, match="missing"):
        store.get(version)
    assert store.add(package_copy) == store.get(version)
    assert listing(store.models) == [version]


def test_add_that_fails_at_the_rename_leaves_nothing_behind(store, package_copy, monkeypatch):
    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ocap_daemon.store.os.rename", fail)
    with pytest.raises(DaemonError, match="No space left"):
        store.add(package_copy)
    assert listing(store.models) == [] and store.versions() == []


def test_pointers_round_trip_and_leave_no_tmp_files(store, package_copy, tmp_path):
    a = read_card(package_copy).version
    store.add(package_copy)
    store.add(make_version(package_copy, tmp_path / "b", "fmnist-cnn-b"))
    store.set_current(a)
    store.set_last_good(a)
    assert store.current() == a and store.last_good() == a
    store.set_current("fmnist-cnn-b")
    assert store.current() == "fmnist-cnn-b" and store.last_good() == a
    assert (store.root / "current").read_text().strip() == "fmnist-cnn-b"
    assert listing(store.root) == ["current", "last_good", "models"]
    store.clear_current()
    store.clear_current()
    assert store.current() is None and store.last_good() == a
    assert listing(store.root) == ["last_good", "models"]


def test_a_failed_pointer_write_keeps_the_old_pointer(store, package_copy, version, monkeypatch):
    store.add(package_copy)
    store.set_current(version)

    def fail(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("ocap_daemon.store.os.replace", fail)
    with pytest.raises(DaemonError, match="current"):
        store.set_current(version)
    assert store.current() == version
    assert listing(store.root) == ["current", "models"]


@pytest.mark.parametrize("content", [b"../../etc", b"", b"  \n", b"a/b", b"..", b".tmp-x-1234",
                                     b"v1\nv2", b"\x00", b"\xff\xfe", b"x" * 500])
def test_garbage_pointer_reads_as_none(store, content):
    (store.root / "current").write_bytes(content)
    (store.root / "last_good").write_bytes(content)
    assert store.current() is None and store.last_good() is None


def test_a_symlinked_pointer_reads_as_none(store, package_copy, version, tmp_path):
    store.add(package_copy)
    (tmp_path / "elsewhere").write_text(version)
    (store.root / "current").symlink_to(tmp_path / "elsewhere")
    assert store.current() is None


def test_set_current_of_an_unknown_version_names_it(store, package_copy):
    store.add(package_copy)
    with pytest.raises(DaemonError, match="no-such-version"):
        store.set_current("no-such-version")
    with pytest.raises(DaemonError, match="plain version name"):
        store.set_last_good("../../etc")
    assert listing(store.root) == ["models"]


def test_set_current_refuses_a_corrupt_version(store, package_copy, version):
    corrupt(store.add(package_copy))
    with pytest.raises(DaemonError, match="sha256"):
        store.set_current(version)
    assert store.current() is None


def test_recover_serves_a_valid_current(store, package_copy, version):
    store.add(package_copy)
    store.set_current(version)
    assert store.recover(resolve_model("fmnist-cnn")) == (store.models / version, "current")


@pytest.fixture
def corrupt_current(store, package_copy, version, tmp_path):
    """The store with ``version`` as last_good and a corrupt fmnist-cnn-b as current."""
    store.add(package_copy)
    store.add(make_version(package_copy, tmp_path / "b", "fmnist-cnn-b"))
    store.set_last_good(version)
    store.set_current("fmnist-cnn-b")
    corrupt(store.models / "fmnist-cnn-b")
    return store


def test_recover_falls_back_to_last_good_when_current_is_corrupt(corrupt_current, version):
    store = corrupt_current
    path, reason = store.recover(resolve_model("fmnist-cnn"))
    assert path == store.models / version
    assert reason.startswith("last_good (current fmnist-cnn-b: ")
    assert "sha256" in reason


def test_recover_falls_back_to_the_base_when_both_are_bad(corrupt_current, version):
    store = corrupt_current
    shutil.rmtree(str(store.models / version))
    base = resolve_model("fmnist-cnn")
    path, reason = store.recover(base)
    assert path == base
    assert reason.startswith("base (current fmnist-cnn-b: ")
    assert f"last_good {version}: is not in the store" in reason


def test_recover_without_pointers_serves_the_base(store, package_copy):
    assert store.recover(package_copy) == (package_copy, "base (no current pointer)")


@pytest.mark.parametrize("content", ["../../etc", "", "missing-version"])
def test_recover_falls_through_a_garbage_current_pointer(store, package_copy, version, content):
    store.add(package_copy)
    store.set_last_good(version)
    (store.root / "current").write_text(content)
    path, reason = store.recover(package_copy)
    assert path == store.models / version
    assert reason.startswith("last_good (")


def test_recover_raises_only_for_a_bad_base(store, package_copy):
    (store.root / "current").write_text("../../etc")
    corrupt(package_copy)
    with pytest.raises(DaemonError, match="base model"):
        store.recover(package_copy)


def test_recover_removes_a_partial_copy_that_is_never_listed(store, package_copy, version):
    store.add(package_copy)
    store.set_current(version)
    partial = store.models / f".tmp-{version}-deadbeef"
    partial.mkdir()
    shutil.copy(str(package_copy / "card.json"), str(partial))
    (store.root / ".current.tmp-cafe").write_text("half")
    assert store.versions() == [version]
    assert store.recover(package_copy) == (store.models / version, "current")
    assert listing(store.models) == [version]
    assert listing(store.root) == ["current", "models"]


def test_a_version_replaced_by_a_symlink_is_refused_and_skipped(store, package_copy, version, tmp_path):
    store.add(package_copy)
    store.set_current(version)
    moved = tmp_path / "moved"
    shutil.move(str(store.models / version), str(moved))
    (store.models / version).symlink_to(moved, target_is_directory=True)
    with pytest.raises(DaemonError, match="symlink"):
        store.get(version)
    assert store.versions() == []
    path, reason = store.recover(package_copy)
    assert path == package_copy and "symlink" in reason
    assert store.add(package_copy) == store.models / version  # add replaces the link with a real copy
    assert not (store.models / version).is_symlink() and store.get(version)
    assert moved.is_dir()


def test_a_symlinked_file_in_a_stored_version_is_refused(store, package_copy, version, tmp_path):
    path = store.add(package_copy)
    shutil.move(str(path / "model.onnx"), str(tmp_path / "m.onnx"))
    (path / "model.onnx").symlink_to(tmp_path / "m.onnx")
    with pytest.raises(DaemonError, match="symlink"):
        store.get(version)


def test_prune_keeps_current_last_good_and_the_newest(package_copy, tmp_path):
    store = ModelStore(tmp_path / "state", keep_versions=2)
    # names sort against their age, so the order must come from the cards' created times
    made = {}
    for i, name in enumerate(["v-e", "v-d", "v-c", "v-b", "v-a"]):
        made[name] = store.add(make_version(package_copy, tmp_path / name, name, f"2026-01-0{i + 1}T00:00:00Z"))
    store.set_current("v-e")  # the oldest
    store.set_last_good("v-d")
    assert store.prune() == ["v-c"]
    assert store.versions() == ["v-a", "v-b", "v-d", "v-e"]
    assert store.prune() == []
    store.set_last_good("v-a")
    assert store.prune() == ["v-d"]
    assert listing(store.models) == ["v-a", "v-b", "v-e"]
