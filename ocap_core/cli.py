"""The algorithms package's ``ocap`` commands (models, train, eval, import, prune, quantize): each parses its
arguments, calls the library, prints. ``add_commands`` adds them to a parser; ``ocap_cli`` composes the
whole ``ocap`` command from them and the control plane's and benchmarks' commands, so this package
imports neither ``daemon`` nor ``bench``. ``python -m ocap_core`` runs these commands alone.

torch is imported only by the commands that need it, so ``ocap eval`` and ``ocap models`` run on a
torch-free install.
"""

import argparse
import json
import logging
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import strict_json
from .errors import OcapError
from .preprocess import DEFAULT_PRESET, INPUT_PRESETS
from .search_spec import DEFAULT_TIME_BUDGET, DEFAULT_WORK_EPOCHS

log = logging.getLogger("ocap")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class ProgressBar:
    """Training progress on stderr: a redrawn bar on a terminal, one line per epoch otherwise."""

    def __init__(self, stream=sys.stderr, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self.tty = stream.isatty()

    def __call__(self, ev: Dict[str, Any]) -> None:
        if ev["event"] == "step" and self.tty:
            done = int(self.width * ev["step"] / ev["steps"])
            self.stream.write(f"\repoch {ev['epoch']}/{ev['epochs']} [{'#' * done}{'.' * (self.width - done)}] "
                              f"{ev['step']}/{ev['steps']} loss {ev['loss']:.4f}")
            self.stream.flush()
        elif ev["event"] == "epoch":
            self.stream.write(("\r" if self.tty else "") + f"epoch {ev['epoch']}/{ev['epochs']} loss "
                              f"{ev['train_loss']:.4f} val {ev['val_accuracy']:.4f} ({ev['seconds']:.0f} s)"
                              + " " * 20 + "\n")
            self.stream.flush()


def _print_json(obj: Any) -> None:
    print(strict_json.dumps(obj, indent=2))


# ---------------------------------------------------------------- commands

def cmd_models(args: argparse.Namespace) -> int:
    from .package import open_package, shipped_models

    rows = []
    for name in shipped_models():
        pkg = open_package(name, verify=args.verify)
        m = pkg.card.metrics
        rows.append({"name": name, "arch": (pkg.card.arch or {}).get("name"), "version": pkg.card.version,
                     "test_accuracy": m.get("test_accuracy"), "macs": m.get("macs"), "params": m.get("params"),
                     "path": str(pkg.path)})
    archs: List[str] = []
    if args.archs:                    # the zoo needs torch, seconds to import: only when asked
        try:
            from .zoo import list_archs
            archs = [a for a in list_archs() if not a.startswith("test_")]     # test_*: the suite's own
        except ImportError:
            raise OcapError("--archs lists the architectures `ocap train` builds, which needs torch: "
                            "pip install 'ocap[torch]'") from None
    if args.json:
        _print_json(dict({"models": rows}, **({"architectures": archs} if args.archs else {})))
        return EXIT_OK
    print(f"{'name':<20} {'arch':<14} {'test acc':>8} {'MACs':>12} {'params':>9}  version")
    for r in rows:
        acc = f"{100 * r['test_accuracy']:.2f} %" if r["test_accuracy"] is not None else "-"
        print(f"{r['name']:<20} {str(r['arch']):<14} {acc:>8} {r['macs']:>12,} {r['params']:>9,}  {r['version']}")
    if archs:
        print("\narchitectures for `ocap train --model`: " + ", ".join(archs) + ", tv:NAME, file.py:Class")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainSpec, train_package

    spec = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     threads=args.threads, max_train_images=args.max_train_images)
    command = "ocap " + " ".join(shlex.quote(a) for a in args.argv)
    pkg = train_package(args.model, args.data, args.out, spec, name=args.name, command=command,
                        progress=None if args.quiet else ProgressBar())
    m = pkg.card.metrics
    summary = {"package": str(pkg.path), "version": pkg.card.version, "val_accuracy": m["val_accuracy"],
               "test_accuracy": m["test_accuracy"], "test_per_class": m["test_per_class"],
               "macs": m["macs"], "params": m["params"]}
    if args.json:
        _print_json(summary)
    else:
        print(f"wrote {pkg.path} ({pkg.card.version}): val {m['val_accuracy']:.4f}, test {m['test_accuracy']:.4f}, "
              f"{m['macs']:,} MACs, {m['params']:,} params")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .evaluate import evaluate_package, parse_classes
    from .package import open_package

    pkg = open_package(args.model)
    classes = parse_classes(args.classes, len(pkg.card.class_names)) if args.classes else None
    if classes is None and len(pkg.card.class_ids) < len(pkg.card.class_names):
        classes = list(pkg.card.class_ids)
    test = load_dataset(args.data, args.split, class_names=pkg.card.class_names)
    res = evaluate_package(pkg, test, classes, threads=args.threads, latency_runs=args.latency_runs)
    if len(pkg.card.class_ids) < len(pkg.card.class_names):
        base_pkg = _parent_package(pkg)
        if base_pkg is not None:
            base = evaluate_package(base_pkg, test, res["classes"], threads=args.threads,
                                    latency_runs=args.latency_runs)
            res["base"] = {k: base[k] for k in ("model", "accuracy", "restricted_accuracy", "macs", "params",
                                                "latency_ms") if k in base}
    if args.json:
        _print_json(res)
        return EXIT_OK
    which = "images (the whole data set)" if args.split == "all" else f"{args.split} images"
    print(f"{res['model']} ({res['version']}) on {res['images']} {which} of classes {res['classes']}")
    print(f"  accuracy            {res['accuracy']:.4f}")
    if "restricted_accuracy" in res:
        print(f"  restricted accuracy {res['restricted_accuracy']:.4f}  (argmax over these classes only)")
    if "base" in res:
        b = res["base"]
        print(f"  base {b['model']}: accuracy {b['accuracy']:.4f}, restricted to these classes "
              f"{b['restricted_accuracy']:.4f}, {b['macs'] / res['macs']:.2f}x the MACs")
    if "fallback_share" in res:
        print(f"  cascade: the base ({res['fallback']}) answered {100 * res['fallback_share']:.1f}% of the images "
              f"(top probability under {res['tau']:.3f}); MACs and latency below are per image, expected")
    print(f"  MACs {res['macs']:,.0f}   params {res['params']:,}")
    if "latency_ms" in res:
        p90 = f", {res['latency_p90_ms']:.3f} ms p90" if "latency_p90_ms" in res else ""
        print(f"  onnxruntime CPU batch-1 latency {res['latency_ms']:.3f} ms median{p90} "
              f"({res['latency_threads']} thread(s))")
    for k, acc in res["per_class"].items():
        print(f"    {k:>3} {res['class_names'][k]:<16} " + ("no images" if acc is None else f"{acc:.4f}"))
    return EXIT_OK


JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


def _arch_kwargs(text: Optional[str]) -> Dict[str, Any]:
    """``--arch-kwargs``: a JSON object of constructor arguments (empty or absent: none), or an OcapError
    naming the flag and what is wrong with the text."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise OcapError(f"--arch-kwargs is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): {text!r}; "
                        f"give an object such as '{{\"width\": 32}}'") from None
    if not isinstance(value, dict):
        raise OcapError(f"--arch-kwargs must be a JSON object of constructor arguments such as "
                        f"'{{\"width\": 32}}', got {JSON_TYPES.get(type(value), 'a value')}: {text!r}")
    return value


def cmd_import(args: argparse.Namespace) -> int:
    from .importer import import_model
    from .preprocess import parse_floats, parse_scale

    shape = tuple(int(v) for v in parse_floats(args.input_shape, "--input-shape"))
    if len(shape) != 3:
        raise OcapError(f"--input-shape: expected C,H,W, got {args.input_shape!r}")
    kwargs = _arch_kwargs(args.arch_kwargs)
    pkg = import_model(args.arch, args.weights, shape, None if args.scale is None else parse_scale(args.scale),
                       None if args.mean is None else parse_floats(args.mean, "--mean"),
                       None if args.std is None else parse_floats(args.std, "--std"), args.classes, args.out,
                       name=args.name, features_module=args.features_module, arch_kwargs=kwargs, preset=args.preset)
    print(f"wrote {pkg.path} ({pkg.card.version}): {pkg.card.metrics['macs']:,} MACs, "
          f"{pkg.card.metrics['params']:,} params, features {pkg.card.features_dim}")
    return EXIT_OK


def _parent_package(pkg):
    """The base package a pruned package was made from (by the path recorded at pruning, then by its
    name), if it is still there with the same version; else None with a warning."""
    from .package import open_package

    prov = pkg.card.provenance
    tried = []
    for ref in (prov.get("base_path"), prov.get("base")):
        if not ref:
            continue
        try:
            base = open_package(ref)
        except OcapError as e:
            tried.append(str(e))
            continue
        if base.card.version == pkg.card.parent:
            return base
        tried.append(f"{ref} is version {base.card.version}, not the parent {pkg.card.parent}")
    log.warning("base model of %s not evaluated: %s", pkg.path, "; ".join(tried) or "no base recorded")
    return None


def cmd_prune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .data import load_dataset
    from .evaluate import parse_classes
    from .finetune import FinetuneSpec
    from .package import open_package
    from .personalize import check_request, personalize
    from .preprocess import parse_floats
    from .prune_spec import PruneSpec
    from .sampling import stream_samples
    from .search_spec import DEFAULT_LEVELS, SearchSpec
    from .selection import check_selector

    base = open_package(args.model)
    classes = parse_classes(args.classes, len(base.card.class_names))
    searching = args.rule == "search" and not args.target_macs
    ft = replace(FinetuneSpec(), epochs=args.epochs, time_budget=0.0 if searching else args.time_budget, lr=args.lr,
                 mixup=args.mixup, seed=args.seed)
    levels = tuple(parse_floats(args.levels, "--levels")) if args.levels else DEFAULT_LEVELS
    search = SearchSpec(max_loss=args.max_loss, levels=levels, time_budget=args.time_budget, work_epochs=args.work_epochs,
                        remove_blocks=not args.keep_blocks, cascade=args.cascade)
    spec = PruneSpec(scorer=args.scorer, rule=args.rule, search=search, min_per_class=args.min_per_class,
                     labels=args.labels, grouping=args.grouping,
                     keep_share=args.keep_share, slope=args.slope, images_per_class=args.images_per_class,
                     keep_first=args.keep_first, prune_stream=args.prune_stream, min_width=args.min_width,
                     min_share=args.min_share, round_to=args.round_to, target_macs=args.target_macs,
                     tau=args.tau, cap_threshold=args.cap_threshold, cap_rounds=args.cap_rounds, cap_tolerance=args.cap_tolerance,
                     theta=args.theta, finetune=ft, threads=args.threads,
                     seed=args.seed)
    check_request(base, classes, spec)              # refused before the data streams through the base
    check_selector(args.select)
    train = load_dataset(args.data, "train", class_names=base.card.class_names)
    samples = stream_samples(base, train, classes, args.select, args.samples_per_class,
                             seed=args.seed, threads=args.threads)
    res = personalize(base, samples, classes, spec, args.out, progress=None if args.quiet else _stage_printer)
    card = res.package.card
    m = card.metrics
    summary = {"package": str(res.package.path), "version": card.version, "class_ids": card.class_ids,
               "macs": m["macs"], "params": m["params"], "mac_reduction": m["mac_reduction"],
               "param_reduction": m["param_reduction"], "val_agreement": m["val_agreement"],
               "samples": card.provenance["samples"], "timings": res.timings,
               "search": card.provenance.get("search"),
               "cascade": None if card.cascade is None else
               {k: m[k] for k in ("tau", "fallback_share", "macs_per_frame", "mac_reduction_per_frame",
                                  "cascade_loss_pp", "cost_per_frame")}}
    if args.json:
        _print_json(summary)
    else:
        print(f"wrote {res.package.path} ({card.version}): classes {card.class_ids}, {m['mac_reduction']:.2f}x fewer "
              f"MACs ({m['macs']:,}), {m['param_reduction']:.2f}x fewer params, validation agreement "
              f"{m['val_agreement']:.4f}")
        if card.cascade is not None:
            print(f"  with the base as fallback below confidence {m['tau']:.3f}: {100 * m['fallback_share']:.1f} % of "
                  f"held-back frames fall back, {m['mac_reduction_per_frame']:.2f}x fewer MACs per frame, "
                  f"{m['cost_per_frame']:.2f}x the base's time per frame")
        for row in (card.provenance.get("search") or {}).get("path", []):
            c = row.get("cascade") or {}
            how = ("accepted" + (" as a cascade" if row.get("accepted_as") == "cascade" else "")) if row["accepted"] \
                else "over budget"
            extra = (f"; with fallback: {100 * c['fallback_share']:.0f} % fall back, -{c['loss_pp']:.2f} pp, "
                     f"{c['cost']:.2f}x the base's time") if c.get("tau") is not None else ""
            print(f"  level {row['level']:>5}x: {row['mac_reduction']:6.2f}x fewer MACs, agreement "
                  f"{row['agreement']:.4f} (-{row['loss_pp']:.2f} pp){extra}, {row['seconds']:.1f} s, {how}")
    return EXIT_OK


def cmd_quantize(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import load_dataset
    from .evaluate import parse_classes
    from .package import open_package
    from .quantize import MIN_CALIBRATION, QuantSpec, compare, quantize_package, record_metrics

    parent = open_package(args.model)
    card = parent.card
    classes = parse_classes(args.classes, len(card.class_names)) if args.classes else list(card.class_ids)
    missing = sorted(set(classes) - set(card.class_ids))
    if missing:
        raise OcapError(f"--classes: model {card.name} outputs classes {card.class_ids}, not {missing}")
    if args.calibration < MIN_CALIBRATION:
        raise OcapError(f"--calibration {args.calibration}: at least {MIN_CALIBRATION} images are needed")
    spec = QuantSpec(calibration=args.calibration, activations=args.activations, seed=args.seed)
    train = load_dataset(args.data, "train", class_names=card.class_names).of_classes(classes)
    if len(train) < MIN_CALIBRATION:
        raise OcapError(f"--data {args.data}: its train split has {len(train)} images of classes {classes}, "
                        f"at least {MIN_CALIBRATION} are needed to calibrate")
    test = load_dataset(args.data, "test", class_names=card.class_names)
    frames = train.x[np.sort(np.random.default_rng(args.seed).permutation(len(train))[:args.calibration])]
    child = quantize_package(parent, frames, args.out, spec, classes=classes, name=args.name,
                             source=f"{args.data} train split")
    res = compare(parent, child, test, classes, threads=args.threads, latency_runs=args.latency_runs)
    keep = ("images", "fp32_accuracy", "int8_accuracy", "agreement", "fp32_ms", "int8_ms", "speedup", "threads")
    child = record_metrics(child, {"test_" + k if k in ("images", "agreement") else k: res[k] for k in keep if k in res})
    q = child.card.provenance["quantization"]
    summary = dict(res, package=str(child.path), version=child.card.version, parent=card.version,
                   calibration=q["calibration"], activations=q["activations"], reduce_range=q["reduce_range"])
    if args.json:
        _print_json(summary)
        return EXIT_OK
    print(f"wrote {child.path} ({child.card.version}): INT8 of {card.version}, calibrated on "
          f"{q['calibration']['frames']} {args.data} training images of classes {classes}")
    print(f"  on {res['images']} test images: FP32 accuracy {res['fp32_accuracy']:.4f}, INT8 {res['int8_accuracy']:.4f} "
          f"({res['delta_pp']:+.2f} pp), top-1 agreement {res['agreement']:.4f}")
    print(f"  size {res['fp32_bytes']:,} -> {res['int8_bytes']:,} bytes ({res['size_ratio']:.2f}x smaller)")
    if "speedup" in res:
        print(f"  batch-1 latency ({res['threads']} thread(s), side by side) {res['fp32_ms']:.3f} -> "
              f"{res['int8_ms']:.3f} ms median ({res['speedup']:.2f}x)")
    return EXIT_OK


def _stage_printer(ev: Dict[str, Any]) -> None:
    if ev["event"] == "stage":
        print(f"  {ev['stage']:<9} {ev['seconds']:7.2f} s", file=sys.stderr)
    elif ev["event"] == "search_level":
        c = ev.get("cascade") or {}
        fb = (f"  with fallback: {100 * c['fallback_share']:.0f}% fall back, -{c['loss_pp']:.2f} pp, "
              f"{c['cost']:.2f}x the base's time" if c.get("tau") is not None else
              "  with fallback: none within" if c else "")
        how = "ok" + (" as a cascade" if ev.get("accepted_as") == "cascade" else "") if ev["accepted"] else "over budget"
        print(f"  level {ev['level']:>5}x  {ev['mac_reduction']:6.2f}x fewer MACs  agreement {ev['agreement']:.4f}  "
              f"{ev['epochs']:>2} epochs  {ev['seconds']:6.1f} s{fb}  {how}", file=sys.stderr)


# ---------------------------------------------------------------- argument table

def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the sha256 checks")
    p.add_argument("--archs", action="store_true", help="also list the architectures `ocap train` builds (needs torch)")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="architecture: registered name, tv:NAME or file.py:Class")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, an image folder, or an .npz")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", required=True, help="new package directory")
    p.add_argument("--name", help="package name (default: the --out directory's name)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization, shuffling and augmentation")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-train-images", type=int, default=0, help="train on a seeded subset (0: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="shipped model name or package directory")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, an image folder, or an .npz")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="which images to score (default: test, the data set's own test images, or for one "
                        "folder or .npz a seeded 1/7 of each class; val: 1/12 of the rest, train: what remains; "
                        "all: every image, for a small data set the model was not trained on)")
    p.add_argument("--classes", help="comma-separated class ids: evaluate on images of these only")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--latency-runs", type=int, default=200, help="timed batch-1 runs (0: skip latency)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="path/file.py:Class of the model")
    p.add_argument("--arch-kwargs", help="JSON object of constructor arguments")
    p.add_argument("--weights", required=True, help="state_dict saved with torch.save")
    p.add_argument("--input-shape", required=True, help="C,H,W")
    p.add_argument("--preset", choices=list(INPUT_PRESETS),
                   help="the model's input convention, input = (pixel * scale - mean) / std: "
                        + "; ".join(f"{k}: {v[3]}" for k, v in INPUT_PRESETS.items())
                        + f" (default {DEFAULT_PRESET}); --scale, --mean and --std override it")
    p.add_argument("--scale", help="pixel scale before mean/std, a number or a fraction such as 1/255 "
                                   "(default: the preset's)")
    p.add_argument("--mean", help="per-channel mean, comma-separated (default: the preset's)")
    p.add_argument("--std", help="per-channel std, comma-separated (default: the preset's)")
    p.add_argument("--classes", required=True, help="text file with one class name per line, in output order")
    p.add_argument("--out", required=True, help="new package directory")
    p.add_argument("--name", help="package name (default: the --out directory's name)")
    p.add_argument("--features-module", help="module whose output is the penultimate feature vector "
                                            "(default: the input of the final Linear)")


def _add_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model: shipped name or package directory")
    p.add_argument("--data", default="fashion-mnist",
                   help="where the device's images come from (its train split; labels in the model's class space)")
    p.add_argument("--classes", required=True, help="observed classes, comma-separated base ids")
    p.add_argument("--out", required=True, help="new package directory")
    p.add_argument("--scorer", default="ocap", help="ocap, ocap-freq, cap, l1, random")
    p.add_argument("--rule", default="search",
                   help="search (default: the smallest model within --max-loss), or a reference rule: "
                        "personalize (OCAP), cap (CAP), hybrid")
    p.add_argument("--max-loss", type=float, default=1.0,
                   help="search budget: points of held-back agreement with the base restricted to the classes")
    p.add_argument("--levels", help="search ladder of MAC reductions, comma-separated (default 1.5,2,3,4,6,8,12,16,24,32)")
    p.add_argument("--min-per-class", type=int, default=32,
                   help="refuse when an observed class has fewer training images than this")
    p.add_argument("--labels", default="none", choices=["none", "truth"], help="fine-tune without or with labels")
    p.add_argument("--grouping", default="pred", choices=["pred", "truth"],
                   help="group images by the base model's prediction (device) or the label (offline)")
    p.add_argument("--select", default="kl", help="sample selector: kl, random, entropy")
    p.add_argument("--samples-per-class", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs (early-stopped on validation)")
    p.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET,
                   help="seconds of work (wall time not spent waiting for a core) of all fine-tuning; for the "
                        "search a safety cap, since its work is counted in epochs (--work-epochs)")
    p.add_argument("--work-epochs", type=int, default=DEFAULT_WORK_EPOCHS,
                   help="the search's work: epochs of fine-tuning in all, its steps and the polish included (the "
                        "same images and seed give the same model on a busy machine)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--mixup", type=float, default=0.0,
                   help="mixup distillation: Beta(a, a) blends of cached images, labelled by the base (0: off)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the sample selection, pruning and fine-tuning")
    p.add_argument("--keep-share", type=float, help="activation scorer's share r (default: per family)")
    p.add_argument("--slope", type=float, help="activation scorer's LeakyReLU slope (default: per family)")
    p.add_argument("--images-per-class", type=int, help="images per class to score on (default: per family)")
    p.add_argument("--keep-first", type=int,
                   help="conv layers nearest the input kept whole (default: 1 when searching, else per family)")
    p.add_argument("--prune-stream", dest="prune_stream", action="store_const", const=True, default=None,
                   help="prune residual-stream channels too (default when searching)")
    p.add_argument("--keep-blocks", action="store_true",
                   help="never remove a residual block whose channels the search left at their floor")
    p.add_argument("--no-cascade", dest="cascade", action="store_false",
                   help="judge each candidate alone only (by default the search also tries it with the base "
                        "answering the frames it is unsure of, and keeps the cheapest point measured)")
    p.add_argument("--keep-stream", dest="prune_stream", action="store_const", const=False,
                   help="keep residual-stream channels whole (default of the reference rules)")
    p.add_argument("--min-width", type=int, help="channels every layer keeps at least (default 2 searching, else 1)")
    p.add_argument("--min-share", type=float, help="share of each layer kept at least (default 0.05 searching, else 0)")
    p.add_argument("--round-to", type=int, help="round kept widths up to a multiple of this (the search: widths above it "
                   "only, default 8; the fixed rules: every width, default per family)")
    p.add_argument("--target-macs", type=float, default=0.0,
                   help="fixed budget instead of the search: MAC reduction factor to reach (any scorer)")
    p.add_argument("--tau", type=float, default=0.0, help="a channel matters for a class when its table entry exceeds tau")
    p.add_argument("--cap-threshold", type=int, default=2, help="cap rule: classes a channel must serve")
    p.add_argument("--cap-rounds", type=int, default=3, help="cap rule: prune -> retrain rounds at most")
    p.add_argument("--cap-tolerance", type=float, default=0.02,
                   help="cap rule: validation agreement a later round may lose against the first")
    p.add_argument("--theta", type=float, default=0.0, help="hybrid rule: threshold on frequency-weighted count")
    p.add_argument("--quiet", action="store_true", help="no stage timings on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_quantize(p: argparse.ArgumentParser) -> None:
    from .quantize import ACTIVATIONS, DEFAULT_CALIBRATION

    p.add_argument("--model", required=True, help="FP32 model: shipped name or package directory (a pruned one too)")
    p.add_argument("--data", default="fashion-mnist",
                   help="calibration images from its train split; FP32 and INT8 compared on its test split")
    p.add_argument("--out", required=True, help="new package directory")
    p.add_argument("--classes", help="comma-separated class ids to calibrate and compare on (default: the model's)")
    p.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION,
                   help="calibration images (a seeded choice; at least 32)")
    p.add_argument("--activations", default="auto", choices=list(ACTIVATIONS),
                   help="uint8 (x86 CPUs), int8 (symmetric: ARM, TensorRT); auto: by this machine")
    p.add_argument("--name", help="package name (default: the model's name + '-int8')")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads when timing")
    p.add_argument("--latency-runs", type=int, default=200, help="timed batch-1 runs of each model (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images chosen for calibration")
    p.add_argument("--json", action="store_true", help="print one JSON object")


AddArguments = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]

COMMANDS: Dict[str, Tuple[AddArguments, Handler, str]] = {
    "models": (_add_models, cmd_models, "list the shipped model packages and architectures"),
    "train": (_add_train, cmd_train, "train a base model and write a model package"),
    "eval": (_add_eval, cmd_eval, "evaluate a model package on labelled images (default: the test split)"),
    "import": (_add_import, cmd_import, "turn a user's trained torch model into a model package"),
    "prune": (_add_prune, cmd_prune, "personalize a base model for observed classes (prune + fine-tune)"),
    "quantize": (_add_quantize, cmd_quantize, "make an INT8 copy of a model package, calibrated on its data"),
}


def new_parser(description: str) -> Tuple[argparse.ArgumentParser, Any]:
    """The ``ocap`` parser without commands, and the subparsers action each package adds its commands to
    (``add_command``): the algorithms' here, the demo's and the benchmarks' in ``ocap_cli``."""
    parser = argparse.ArgumentParser(prog="ocap", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return parser, sub


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its help already says it or there is none to say
    (None, a switch's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default {default})" if text else f"default {default}"


def add_command(sub: Any, name: str, add: AddArguments, handler: Handler, help_text: str) -> None:
    """One ``ocap NAME`` command: its arguments (``add``) and the function that runs it."""
    p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsFormatter)
    add(p)
    p.set_defaults(handler=handler)


def add_commands(sub: Any) -> None:
    """The algorithms package's commands: models, train, eval, import, prune, quantize."""
    for name, (add, handler, help_text) in COMMANDS.items():
        add_command(sub, name, add, handler, help_text)


def build_parser() -> argparse.ArgumentParser:
    """The algorithms package's commands only (``python -m ocap_core``); the ``ocap`` command, with
    ``demo`` and ``bench`` too, is ``ocap_cli``'s."""
    parser, sub = new_parser("ocap offline tools: the algorithms package's commands (`ocap`, or python -m "
                             "ocap_cli, also has demo and bench)")
    add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None,
         build: Callable[[], argparse.ArgumentParser] = build_parser) -> int:
    """Parse ``argv`` with the parser ``build`` makes, run the chosen command's handler, exit 1 with one
    line on an OcapError; quiet (exit 141) when stdout is a pipe closed early (``ocap eval ... | head -1``)."""
    from .closed_pipe import quiet_on_closed_pipe

    return quiet_on_closed_pipe(lambda: _main(argv, build))


def _main(argv: Optional[Sequence[str]], build: Callable[[], argparse.ArgumentParser]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except OcapError as e:
        print(f"ocap {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print(f"ocap {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
