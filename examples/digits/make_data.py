"""Write digits.npz: scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes,
UCI's optical recognition set), upscaled to 16x16 grey uint8 -- a small real data set that is not
Fashion-MNIST and needs no download.

    python examples/digits/make_data.py OUT_DIR     # writes OUT_DIR/digits.npz and OUT_DIR/classes.txt
"""

import sys
from pathlib import Path
from typing import Tuple

import numpy as np
from sklearn.datasets import load_digits

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits_16x16() -> Tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    x = d.images.astype(np.float64) * (255.0 / 16.0)             # pixel values 0..16 -> 0..255
    x = x.repeat(2, axis=1).repeat(2, axis=2)                     # 8x8 -> 16x16 (nearest)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), d.target.astype(np.int64)


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = digits_16x16()
    np.savez_compressed(out_dir / "digits.npz", x=x, y=y, class_names=np.array(CLASSES))
    (out_dir / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    print(f"{out_dir / 'digits.npz'}: {len(y)} images {x.shape[1]}x{x.shape[2]}, "
          f"{np.bincount(y).min()}..{np.bincount(y).max()} per class")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
