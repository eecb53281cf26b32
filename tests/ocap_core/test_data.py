import numpy as np
import pytest

from ocap_core.data import (
    FASHION_MNIST_CLASSES,
    Dataset,
    load_dataset,
    load_image_folder,
    load_npz,
    read_image,
    stratified_split,
)
from ocap_core.errors import OcapError


@pytest.fixture(scope="module")
def fmnist():
    return {s: load_dataset("fashion-mnist", s) for s in ("train", "val", "test", "trainval")}


def test_fashion_mnist_sizes_and_shapes(fmnist):
    assert len(fmnist["train"]) == 55000 and len(fmnist["val"]) == 5000 and len(fmnist["test"]) == 10000
    assert fmnist["train"].x.shape[1:] == (28, 28, 1) and fmnist["train"].x.dtype == np.uint8
    assert fmnist["test"].class_names == FASHION_MNIST_CLASSES
    assert list(fmnist["val"].counts()) == [500] * 10
    assert list(fmnist["test"].counts()) == [1000] * 10
    assert 60 < fmnist["trainval"].x.mean() < 80          # real images, not zeros


def test_train_and_val_partition_the_training_images(fmnist):
    both = np.concatenate([fmnist["train"].x, fmnist["val"].x]).reshape(60000, -1)
    whole = fmnist["trainval"].x.reshape(60000, -1)
    # the same multiset of images: sort rows and compare
    key = lambda a: a[np.lexsort(a[:, ::-1].T)]  # noqa: E731
    assert np.array_equal(key(both), key(whole))


def test_splits_are_deterministic(fmnist):
    again = load_dataset("fashion-mnist", "val")
    assert np.array_equal(again.x, fmnist["val"].x) and np.array_equal(again.y, fmnist["val"].y)


def test_stratified_split_is_disjoint_complete_and_seeded():
    y = np.repeat(np.arange(5), 100)
    rest, held = stratified_split(y, 0.2, seed=3)
    assert len(np.intersect1d(rest, held)) == 0 and len(rest) + len(held) == len(y)
    assert list(np.bincount(y[held])) == [20] * 5
    assert np.array_equal(held, stratified_split(y, 0.2, seed=3)[1])
    assert not np.array_equal(held, stratified_split(y, 0.2, seed=4)[1])


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("OCAP_FASHION_MNIST", str(tmp_path))
    with pytest.raises(OcapError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test")


def test_unknown_split_and_dataset():
    with pytest.raises(OcapError, match="unknown split"):
        load_dataset("fashion-mnist", "dev")
    with pytest.raises(OcapError, match="unknown dataset"):
        load_dataset("imagenet", "test")


# ---------------------------------------------------------------- user data

def _write_pngs(root, per_class=6, shape=(12, 10), mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ["cat", "dog", "emu"]:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, shape + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / name / f"{i}.png")


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_image_folder_loads_and_splits(tmp_path, mode, channels):
    _write_pngs(tmp_path, per_class=14, mode=mode)
    ds = load_image_folder(tmp_path)
    assert ds.class_names == ["cat", "dog", "emu"] and ds.x.shape == (42, 12, 10, channels)
    parts = [load_dataset(str(tmp_path), s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 42 and all(len(p) for p in parts)
    assert list(parts[2].counts()) == [2, 2, 2]


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    _write_pngs(tmp_path / "train", per_class=12)
    _write_pngs(tmp_path / "test", per_class=3)
    assert len(load_dataset(str(tmp_path), "test")) == 9
    assert len(load_dataset(str(tmp_path), "trainval")) == 36


def test_image_folder_errors_name_the_file(tmp_path):
    _write_pngs(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(OcapError, match="broken.png"):
        load_image_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").unlink()
    from PIL import Image

    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "emu" / "small.png")
    with pytest.raises(OcapError, match="small.png.*shape"):
        load_image_folder(tmp_path)
    (tmp_path / "emu" / "small.png").unlink()
    (tmp_path / "fox").mkdir()
    with pytest.raises(OcapError, match="fox.*no images"):
        load_image_folder(tmp_path)


def test_npz_round_trip_and_grey_promotion(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (70, 8, 8), dtype=np.uint8)
    y = np.arange(70) % 7
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_npz(tmp_path / "d.npz")
    assert ds.x.shape == (70, 8, 8, 1) and ds.num_classes == 7 and np.array_equal(ds.y, y)
    assert list(load_dataset(str(tmp_path / "d.npz"), "test").counts()) == [1] * 7   # 1/7 of each class


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.zeros((4, 8, 8), np.uint8)}, "needs arrays 'x' and 'y'"),
    ({"x": np.zeros((4, 8, 8), np.float32), "y": np.zeros(4, int)}, "uint8"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3, int)}, "one label per image"),
    ({"x": np.zeros((4, 8, 8, 5), np.uint8), "y": np.zeros(4, int)}, "C 1 or 3"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, -1, 2])}, "label -1 is out of range"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, 1, 2]), "class_names": np.array(["a", "b"])},
     r"label 2 is out of range 0..1 \(the file's class_names\)"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0.5, 1, 1, 2])}, "integer class ids"),
])
def test_bad_npz_names_the_file_and_the_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(OcapError, match=message) as e:
        load_npz(path)
    assert "bad.npz" in str(e.value)


def test_npz_that_is_not_a_zip(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(OcapError, match="junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"), "train")


def test_split_all_is_every_image_and_an_empty_split_suggests_it(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "four.npz", x=x, y=np.array([0, 1, 2, 5]))
    ds = load_dataset(str(tmp_path / "four.npz"), "all")
    assert len(ds) == 4 and np.array_equal(ds.x[..., 0], x)
    with pytest.raises(OcapError, match=r"four.npz has too few images \(4\) for a test split.*--split all"):
        load_dataset(str(tmp_path / "four.npz"), "test")


def test_a_split_without_some_classes_warns(tmp_path, caplog):
    y = np.array([0] * 14 + [1] * 3)                 # class 1: too few images for a seeded 1/7
    np.savez(tmp_path / "d.npz", x=np.zeros((17, 8, 8), np.uint8), y=y)
    assert list(load_dataset(str(tmp_path / "d.npz"), "test").counts()) == [2, 0]
    assert "none of classes [1]" in caplog.text and "--split all" in caplog.text


def test_fashion_mnist_all_is_train_and_test(fmnist):
    assert len(load_dataset("fashion-mnist", "all")) == 70000


def test_a_models_class_space_replaces_the_largest_label(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 8, 8), np.uint8), y=np.array([0, 1, 2, 3, 4, 5]))
    assert load_dataset(str(tmp_path / "d.npz"), "all").num_classes == 6
    names = [f"c{k}" for k in range(10)]
    ds = load_dataset(str(tmp_path / "d.npz"), "all", class_names=names)
    assert ds.class_names == names and list(ds.y) == [0, 1, 2, 3, 4, 5]
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 8, 8), np.uint8), y=np.array([0, 12, 3, 10, 12]))
    with pytest.raises(OcapError, match=r"bad.npz: labels 10, 12 are out of range 0..9 \(the model's classes\)"):
        load_dataset(str(tmp_path / "bad.npz"), "all", class_names=names)


def test_image_folders_map_to_a_models_classes_by_name_or_id(tmp_path):
    _write_pngs(tmp_path / "named", per_class=2)          # cat, dog, emu
    ds = load_dataset(str(tmp_path / "named"), "all", class_names=["ant", "cat", "dog", "emu"])
    assert list(ds.counts()) == [0, 2, 2, 2] and ds.class_names == ["ant", "cat", "dog", "emu"]
    from PIL import Image

    for k in ("3", "7"):
        (tmp_path / "ids" / k).mkdir(parents=True)
        Image.fromarray(np.zeros((12, 10), np.uint8), "L").save(tmp_path / "ids" / k / "a.png")
    ds = load_dataset(str(tmp_path / "ids"), "all", class_names=[f"c{k}" for k in range(8)])
    assert sorted(ds.y) == [3, 7]
    with pytest.raises(OcapError, match=r"ids: label 7 is out of range 0..4"):
        load_dataset(str(tmp_path / "ids"), "all", class_names=[f"c{k}" for k in range(5)])
    with pytest.raises(OcapError, match=r"class folders \['cat', 'emu'\] are neither class names nor class ids"):
        load_dataset(str(tmp_path / "named"), "all", class_names=["ant", "dog"])


def test_dataset_rejects_wrong_layout():
    with pytest.raises(OcapError, match="uint8 N x H x W x C"):
        Dataset(np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int64), ["a"])


def test_train_and_test_folders_must_have_the_same_classes(tmp_path):
    _write_pngs(tmp_path / "train", per_class=12)
    _write_pngs(tmp_path / "test", per_class=3)
    import shutil

    shutil.rmtree(tmp_path / "test" / "emu")
    with pytest.raises(OcapError, match="class folders"):
        load_dataset(str(tmp_path), "test")


def test_read_image_takes_npy_arrays_and_names_bad_files(tmp_path):
    np.save(tmp_path / "ok.npy", np.zeros((28, 28), np.uint8))
    assert read_image(tmp_path / "ok.npy").shape == (28, 28, 1)
    np.save(tmp_path / "float.npy", np.zeros((28, 28), np.float32))
    with pytest.raises(OcapError, match=r"float.npy: expected a uint8"):
        read_image(tmp_path / "float.npy")
    (tmp_path / "bad.npy").write_bytes(b"nope")
    with pytest.raises(OcapError, match="bad.npy is unreadable"):
        read_image(tmp_path / "bad.npy")
