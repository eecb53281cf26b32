"""Fixtures of the daemon's tests. ``pruned_1_8``: a real candidate the engine made from the shipped CNN
for {Trouser, Bag} (3 epochs, the OCAP rule: 24 held-back images are too few to search), once per
session; it needs torch, so only torch-marked modules use it."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def pruned_1_8(tmp_path_factory):
    from ocap_core.data import load_dataset
    from ocap_core.finetune import FinetuneSpec
    from ocap_core.package import open_package, resolve_model
    from ocap_core.personalize import personalize
    from ocap_core.personalize_samples import Samples
    from ocap_core.prune_spec import PruneSpec

    train = load_dataset("fashion-mnist", "train")
    idx = np.concatenate([np.flatnonzero(train.y == k)[:60] for k in (1, 8)])
    samples = Samples(x=train.x[idx], is_val=np.arange(len(idx)) % 5 == 0)
    out = tmp_path_factory.mktemp("pruned") / "cand"
    personalize(open_package(resolve_model("fmnist-cnn")), samples, [1, 8],
                PruneSpec(rule="personalize", finetune=FinetuneSpec(epochs=3), threads=1), out)
    return out
