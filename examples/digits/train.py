"""Train DigitNet on digits.npz the way a user would, outside ocap, and save its state_dict.

    python examples/digits/train.py DATA_DIR [EPOCHS]   # reads DATA_DIR/digits.npz, writes DATA_DIR/digitnet.pt

Trains on a seeded 5/6 of the images (the rest is printed as a check), pixels scaled to 0..1: the
model's input convention is ``--preset unit`` when it is imported.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from net import DigitNet  # noqa: E402


def main(data_dir: str, epochs: int = 15, seed: int = 0) -> None:
    d = Path(data_dir)
    with np.load(d / "digits.npz") as f:
        x = torch.from_numpy(f["x"].astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(f["y"])
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    order = torch.randperm(len(y))
    cut = len(y) * 5 // 6
    tr, te = order[:cut], order[cut:]
    model = DigitNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        shuffled = tr[torch.randperm(cut)]
        for i in range(0, cut, 64):
            idx = shuffled[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[te]).argmax(1) == y[te]).float().mean())
    torch.save(model.state_dict(), d / "digitnet.pt")
    print(f"{d / 'digitnet.pt'}: accuracy {100 * acc:.1f}% on {len(te)} images it did not train on")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".", int(sys.argv[2]) if len(sys.argv) > 2 else 15)
