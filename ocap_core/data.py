"""Image datasets as plain numpy arrays: Fashion-MNIST from its Debian package, ImageFolder directories
and ``.npz`` files, with deterministic train / validation / test splits (and ``all``: every image).

Images are ``uint8`` arrays of shape N x H x W x C (C = 1 for grey images); labels are ``int64``.
The test split is only ever used for final evaluation.
"""

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import OcapError

log = logging.getLogger(__name__)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "OCAP_FASHION_MNIST"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SPLITS = ("train", "val", "test", "trainval", "all")
SPLIT_SEED = 20231
VAL_FRACTION = 1 / 12          # 5,000 of Fashion-MNIST's 60,000 training images
TEST_FRACTION = 1 / 7          # user data without its own test split: 1/7 held out, as 10k of 70k
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pnm", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Dataset:
    """Images (N x H x W x C, uint8), labels (N, int64) and the names of all classes."""

    x: np.ndarray
    y: np.ndarray
    class_names: List[str]
    name: str = ""

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.dtype != np.uint8:
            raise OcapError(f"dataset {self.name!r}: images must be uint8 N x H x W x C, got "
                            f"{self.x.dtype} {self.x.shape}")
        if self.y.shape != (len(self.x),):
            raise OcapError(f"dataset {self.name!r}: {len(self.x)} images but labels of shape {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of one image, the layout models take."""
        _, h, w, c = self.x.shape
        return (c, h, w)

    def subset(self, index: np.ndarray) -> "Dataset":
        return Dataset(self.x[index], self.y[index], self.class_names, self.name)

    def of_classes(self, classes: Sequence[int]) -> "Dataset":
        """Only the images whose label is in ``classes`` (labels stay in the full label space)."""
        return self.subset(np.flatnonzero(np.isin(self.y, np.asarray(classes))))

    def counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.num_classes)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held) with ``fraction`` of every class held out; sorted, deterministic."""
    rng = np.random.default_rng(seed)
    held = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        n = int(round(len(idx) * fraction))
        held.append(rng.permutation(idx)[:n])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

def fashion_mnist_dir() -> Path:
    return Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DIR))


def _read_idx(path: Path, offset: int) -> np.ndarray:
    if not path.is_file():
        raise OcapError(
            f"Fashion-MNIST file {path} is missing: install the Debian package with "
            f"`sudo apt-get install dataset-fashion-mnist`, or set {FASHION_MNIST_ENV} to a directory "
            f"holding the four *-ubyte.gz files")
    try:
        with gzip.open(path) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    except (OSError, EOFError, ValueError) as e:
        raise OcapError(f"Fashion-MNIST file {path} is unreadable: {e}") from e


def _fashion_mnist_part(prefix: str) -> Dataset:
    root = fashion_mnist_dir()
    x = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 16)
    y = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    if x.size != len(y) * 28 * 28:
        raise OcapError(f"Fashion-MNIST files in {root}: {x.size} pixels do not fit {len(y)} 28x28 images")
    return Dataset(x.reshape(-1, 28, 28, 1), y, list(FASHION_MNIST_CLASSES), "fashion-mnist")


# ---------------------------------------------------------------- user data

MAX_PIXELS = 4096 * 4096      # a bigger image is refused before it is decoded (decompression bombs)


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image file -> uint8 H x W x C (C = 1 or 3); ``.npy`` holds the array itself. Errors name the file."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
            if arr.size > max_pixels * 3:
                raise OcapError(f"image file {path}: {arr.shape} is over the limit of {max_pixels} pixels")
            arr = np.array(arr)
        except (OSError, ValueError) as e:
            raise OcapError(f"image file {path} is unreadable: {e}") from e
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
            raise OcapError(f"image file {path}: expected a uint8 H x W [x 1|3] array, got {arr.dtype} {arr.shape}")
        return arr[:, :, None] if arr.ndim == 2 else arr
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a base dependency
        raise OcapError(f"reading {path} needs Pillow: pip install pillow") from e
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > max_pixels:
                raise OcapError(f"{im.size[0]} x {im.size[1]} pixels, over the limit of {max_pixels}")
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for bad files
        raise OcapError(f"image file {path} is unreadable: {e}") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image_folder(root: Path) -> Dataset:
    """An ImageFolder-style directory: one sub-folder per class (sorted names = class ids)."""
    root = Path(root)
    if not root.is_dir():
        raise OcapError(f"dataset directory {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise OcapError(f"dataset directory {root} has no class sub-folders (expected ROOT/CLASS/IMAGE)")
    xs: List[np.ndarray] = []
    ys: List[int] = []
    shape = None
    for k, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise OcapError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            img = read_image(f)
            if shape is None:
                shape = img.shape
            elif img.shape != shape:
                raise OcapError(f"image {f} has shape {img.shape}, but earlier images have {shape}; "
                                f"all images of a dataset must share one shape")
            xs.append(img)
            ys.append(k)
    return Dataset(np.stack(xs), np.asarray(ys, np.int64), classes, str(root))


def load_npz(path: Path, class_names: Optional[List[str]] = None) -> Dataset:
    """An ``.npz`` with ``x`` (N x H x W or N x H x W x C, uint8) and ``y`` (int class ids)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise OcapError(f"{path}: an .npz dataset needs arrays 'x' and 'y', found {sorted(f.files)}")
            x, y = f["x"], f["y"]
            names = [str(s) for s in f["class_names"]] if "class_names" in f else None
    except OcapError:
        raise
    except Exception as e:
        raise OcapError(f"{path} is not a readable .npz file: {e}") from e
    if x.dtype != np.uint8:
        raise OcapError(f"{path}: 'x' must be uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise OcapError(f"{path}: 'x' must be N x H x W or N x H x W x C with C 1 or 3, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise OcapError(f"{path}: 'y' must be one label per image ({len(x)}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise OcapError(f"{path}: 'y' must hold integer class ids, got {y.dtype}")
    if len(y) == 0:
        raise OcapError(f"{path}: no images")
    space = "the model's classes" if class_names else ("the file's class_names" if names else "")
    names = class_names or names
    n_classes = len(names) if names else int(y.max()) + 1
    check_labels(y, n_classes, str(path), space)
    names = names or [str(k) for k in range(n_classes)]
    return Dataset(np.ascontiguousarray(x), y.astype(np.int64), names, str(path))


def check_labels(y: np.ndarray, num_classes: int, source: str, space: str = "") -> None:
    """Every label in 0..num_classes-1, or an error naming the labels outside and ``source``."""
    bad = np.unique(y[(y < 0) | (y >= num_classes)])
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise OcapError(f"{source}: label{'s' if len(bad) > 1 else ''} {shown} {'are' if len(bad) > 1 else 'is'} "
                        f"out of range 0..{num_classes - 1}" + (f" ({space})" if space else ""))


def in_class_space(data: Dataset, class_names: Sequence[str], folders: bool = False) -> Dataset:
    """``data`` with a model's class names; labels outside them are an error naming them and the data set.

    With ``folders`` (an image folder, whose labels are its sorted sub-folder names), a folder named as
    one of the model's classes, or by a class id, takes that id; folders named otherwise keep their
    positions only when there are as many as the model has classes.
    """
    names = [str(s) for s in class_names]
    y = data.y
    if folders and data.class_names != names:
        own = data.class_names
        if set(own) <= set(names):
            ids = [names.index(s) for s in own]
        elif all(s.isdigit() for s in own):
            ids = [int(s) for s in own]
        elif len(own) == len(names):
            ids = list(range(len(own)))
        else:
            raise OcapError(f"{data.name}: class folders {[s for s in own if s not in names]} are neither class "
                            f"names nor class ids of the model ({len(names)} classes: {names})")
        y = np.asarray(ids, np.int64)[data.y]
    check_labels(y, len(names), data.name or "dataset", f"the model has {len(names)} classes")
    return Dataset(data.x, y, names, data.name)


def _concat(a: Dataset, b: Dataset) -> Dataset:
    if a.x.shape[1:] != b.x.shape[1:]:
        raise OcapError(f"{a.name} has images of shape {a.x.shape[1:]}, {b.name} of {b.x.shape[1:]}")
    return Dataset(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), a.class_names, a.name)


# ---------------------------------------------------------------- one entry point

SPLIT_RULES = {"test": "a seeded 1/7 of each class", "val": "1/12 of each class after the test split",
               "train": "what the test and val splits leave", "trainval": "all but the test split"}


def _split(full: Dataset, split: str, test_held: bool) -> Dataset:
    if split == "all":
        return full
    if test_held:
        rest, test = stratified_split(full.y, TEST_FRACTION, SPLIT_SEED + 1)
        if split == "test":
            return full.subset(test)
        full = full.subset(rest)
    if split == "trainval":
        return full
    train, val = stratified_split(full.y, VAL_FRACTION, SPLIT_SEED)
    return full.subset(train if split == "train" else val)


def load_dataset(spec: str, split: str, class_names: Optional[Sequence[str]] = None) -> Dataset:
    """Load ``split`` (train, val, test, trainval, all) of ``fashion-mnist``, an image folder or an ``.npz``.

    Fashion-MNIST's 60k training images give train (55k) and val (5k, stratified, seeded); its 10k
    test images are the test split. User data that has ``train/`` and ``test/`` sub-folders (or a
    single folder or file) is split the same way, holding out a seeded 1/7 as test when needed.
    ``all`` is every image. A split that comes out empty is an error that suggests ``all``.

    ``class_names`` (a model's) fix the class space: labels outside it are an error naming them;
    without them it is the data set's own (an ``.npz`` without names: its largest label + 1).
    """
    if split not in SPLITS:
        raise OcapError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")

    def space(data: Dataset, folders: bool = False) -> Dataset:
        return data if class_names is None else in_class_space(data, class_names, folders)

    path = Path(spec)
    if spec in ("fashion-mnist", "fmnist"):
        full = space(_fashion_mnist_part("train")) if split != "test" else None
        test = space(_fashion_mnist_part("t10k")) if split in ("test", "all") else None
        held = False
    elif path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        full = space(load_image_folder(path / "train"), True) if split != "test" else None
        test = None
        if split in ("test", "all"):
            test = load_image_folder(path / "test")
            train_classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
            if test.class_names != train_classes:
                raise OcapError(f"{path / 'test'} has class folders {test.class_names}, but {path / 'train'} "
                                f"has {train_classes}")
            test = space(test, True)
        held = False
    elif path.is_dir():
        full, test, held = space(load_image_folder(path), True), None, True
    elif path.suffix == ".npz":
        if not path.is_file():
            raise OcapError(f"dataset file {path} does not exist")
        full, test, held = load_npz(path, None if class_names is None else list(class_names)), None, True
    else:
        raise OcapError(f"unknown dataset {spec!r}: give 'fashion-mnist', an image folder or an .npz file")
    if full is None:
        assert test is not None
        return test
    if test is not None:
        return _concat(full, test)
    out = _split(full, split, test_held=held)
    rule = SPLIT_RULES.get(split, split)
    if len(out) == 0:
        raise OcapError(f"{full.name} has too few images ({len(full)}) for a {split} split ({rule}), which would "
                        f"be empty; use --split all to use every image")
    left_out = sorted(set(np.unique(full.y).tolist()) - set(np.unique(out.y).tolist()))
    if left_out:
        log.warning("%s: the %s split (%s) holds %d of %d images and none of classes %s (too few of them); "
                    "--split all uses every image", full.name, split, rule, len(out), len(full), left_out)
    return out
