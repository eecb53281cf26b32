"""Make tests/data/fmnist-cnn-1-8: a real pruned candidate for the control plane's tests, so that they run
without torch (on Python 3.8 too). The engine makes it from the shipped CNN for {Trouser, Bag} exactly as
a device would (OCAP's rule: 24 held-back images are too few to search, 3 epochs of distillation on the
first 60 training images of each class, 1 thread), then keeps what serving and the gate read: the card
and the ONNX file (160 KB; the torch weights are not needed to serve, gate, deploy or roll back).

    ocap-python scripts/make_test_candidate.py [OUT]        # default: tests/data/fmnist-cnn-1-8
"""

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ocap_core.data import load_dataset
from ocap_core.finetune_spec import FinetuneSpec
from ocap_core.package import ONNX, open_package, resolve_model, write_card
from ocap_core.personalize import personalize
from ocap_core.personalize_samples import Samples
from ocap_core.prune_spec import PruneSpec

ROOT = Path(__file__).resolve().parent.parent
CLASSES = [1, 8]


def make(out: Path) -> Path:
    train = load_dataset("fashion-mnist", "train")
    idx = np.concatenate([np.flatnonzero(train.y == k)[:60] for k in CLASSES])
    samples = Samples(x=train.x[idx], is_val=np.arange(len(idx)) % 5 == 0)
    with tempfile.TemporaryDirectory() as tmp:
        made = personalize(open_package(str(resolve_model("fmnist-cnn"))), samples, CLASSES,
                           PruneSpec(rule="personalize", finetune=FinetuneSpec(epochs=3), threads=1),
                           Path(tmp) / "cand", name="fmnist-cnn-k2").package
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copy2(made.path / ONNX, out / ONNX)
    card = made.card
    prov = dict(card.provenance, base_path=None,
                made_by="scripts/make_test_candidate.py (ONNX only: the torch weights and pruning history "
                        "were dropped, serving does not read them)")
    write_card(out, dataclasses.replace(card, files={ONNX: card.files[ONNX]}, arch=None, provenance=prov))
    return out


if __name__ == "__main__":
    print(open_package(str(make(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/data/fmnist-cnn-1-8"))).path)
