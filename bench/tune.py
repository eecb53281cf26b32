"""Tune personalization defaults on the *validation* split (never the test split).

``python -m bench.tune --model fmnist-cnn --ks 2,3 --subsets 2 --grid '{"keep_first": [1, 2], "min_share": [0, 0.1]}'``
prints, per setting, the mean MAC reduction and the mean accuracy change against the base model
restricted to the subset, both on validation images of the subset.
"""

import argparse
import itertools
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List

from ocap_core import strict_json

from .quality import class_subsets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--ks", default="2,3")
    ap.add_argument("--subsets", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--per-class", type=int, default=256)
    ap.add_argument("--grid", default="{}", help="JSON: PruneSpec field -> list of values")
    args = ap.parse_args()

    from ocap_core.data import load_dataset
    from ocap_core.evaluate import evaluate_package
    from ocap_core.package import open_package
    from ocap_core.personalize import personalize
    from ocap_core.prune_spec import PruneSpec
    from ocap_core.sampling import stream_samples

    base = open_package(args.model)
    train, val = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "val")
    grid: Dict[str, List[Any]] = json.loads(args.grid)
    subsets = [c for k in map(int, args.ks.split(",")) for c in class_subsets(k, args.subsets, args.seed)]
    samples = {tuple(c): stream_samples(base, train, c, "kl", args.per_class, seed=args.seed) for c in subsets}
    refs = {tuple(c): evaluate_package(base, val, c, latency_runs=0)["restricted_accuracy"] for c in subsets}
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        ft = {k[3:]: v for k, v in setting.items() if k.startswith("ft_")}
        spec = replace(PruneSpec(seed=args.seed), **{k: v for k, v in setting.items() if not k.startswith("ft_")})
        spec = replace(spec, finetune=replace(spec.finetune, epochs=args.epochs, **ft))
        deltas, macs = [], []
        for c in subsets:
            with tempfile.TemporaryDirectory() as tmp:
                res = personalize(base, samples[tuple(c)], c, spec, Path(tmp) / "c", name="tune")
                acc = evaluate_package(res.package, val, c, latency_runs=0)["accuracy"]
            deltas.append(100 * (acc - refs[tuple(c)]))
            macs.append(res.package.card.metrics["mac_reduction"])
        print(strict_json.dumps({"setting": setting, "mean_delta_pp": round(sum(deltas) / len(deltas), 2),
                          "worst_delta_pp": round(min(deltas), 2), "mean_mac_reduction": round(sum(macs) / len(macs), 2),
                          "per_subset": [[c, round(d, 2), round(m, 2)] for c, d, m in zip(subsets, deltas, macs)]}),
              flush=True)


if __name__ == "__main__":
    main()
