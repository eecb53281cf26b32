"""Write and read model packages in their torch form (weights.pt + arch) and ONNX form (model.onnx)."""

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from . import strict_json
from .errors import OcapError
from .export import export_onnx, find_classifier, parity_diffs
from .measure import count_macs, count_params
from .package import (
    CARD,
    ONNX,
    OPSET,
    WEIGHTS,
    Card,
    ModelPackage,
    file_sha256,
    open_package,
    utc_now,
    write_card,
)
from .preprocess import InputSpec
from .torch_compat import load_tensors

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4
PARITY_SAMPLES = 64
USER_ARCH_FILE = "arch.py"
PRUNING_FILE = "pruning.json"


def save_package(model: nn.Module, out: Path, *, name: str, input_spec: InputSpec, class_names: Sequence[str],
                 arch: Optional[Dict[str, Any]] = None, class_ids: Optional[Sequence[int]] = None,
                 parent: Optional[str] = None, metrics: Optional[Dict[str, Any]] = None,
                 provenance: Optional[Dict[str, Any]] = None, features_module: Optional[str] = None,
                 extra_files: Optional[Dict[str, Path]] = None, overwrite: bool = False,
                 parity_inputs: Optional[torch.Tensor] = None,
                 cascade: Optional[Dict[str, Any]] = None) -> ModelPackage:
    """Export ``model`` into a new package directory ``out`` (written aside, then renamed into place).
    ``cascade`` (``cascade.cascade_entry``) makes it a specialist served with the base as its fallback
    (``extra_files`` then carries the base's ONNX file as fallback.onnx).

    ``arch`` ({"name", "kwargs"}) makes a torch form (weights.pt) that ``load_model`` can rebuild; the
    ONNX form is always written and must match torch within 1e-4 on ``parity_inputs`` (default: 64
    random inputs; outputs larger than 1 in magnitude are compared relative to it), or nothing is written.
    """
    out = Path(out)
    if out.exists() and not (overwrite or (out.is_dir() and not any(out.iterdir()))):
        raise OcapError(f"output {out} already exists; choose a new directory")
    ids = list(class_ids) if class_ids is not None else list(range(len(class_names)))
    model = model.to(memory_format=torch.contiguous_format).cpu().eval()
    shape = tuple(input_spec.shape)
    classifier = None if features_module else find_classifier(model, shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        files: List[str] = []
        if arch is not None:
            torch.save(model.state_dict(), tmp / WEIGHTS)
            files.append(WEIGHTS)
        for fname, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / fname)
            files.append(fname)
        export_onnx(model, shape, tmp / ONNX, classifier=classifier, features_module=features_module)
        files.append(ONNX)
        x = parity_inputs[:PARITY_SAMPLES] if parity_inputs is not None else \
            torch.randn(PARITY_SAMPLES, *shape, generator=torch.Generator().manual_seed(0))
        diff, scaled = parity_diffs(model, tmp / ONNX, x, classifier, features_module)
        if not scaled <= PARITY_TOLERANCE:
            raise OcapError(f"ONNX export of {name} disagrees with torch: max |diff| {diff:.2e} (relative to "
                            f"outputs beyond 1: {scaled:.2e}) > {PARITY_TOLERANCE}")
        with torch.no_grad():
            from .export import with_features
            logits, feats = with_features(model, shape, classifier, features_module)(x[:2])
        if logits.shape[1] != len(ids):
            raise OcapError(f"model {name} has {logits.shape[1]} outputs but {len(ids)} class ids")
        all_metrics = {"macs": count_macs(model, shape), "params": count_params(model),
                       "onnx_parity_max_abs_diff": diff,
                       "onnx_parity_scaled_diff": scaled, "onnx_bytes": (tmp / ONNX).stat().st_size,
                       "onnx_opset": OPSET}
        all_metrics.update(metrics or {})
        digests = {f: file_sha256(tmp / f) for f in files}
        version = f"{name}-{digests[ONNX][:12]}"
        if cascade is not None:
            from .cascade_package import cascade_version
            version = cascade_version(version, cascade["tau"])
        card = Card(name=name, version=version, input=input_spec,
                    class_names=list(class_names), class_ids=ids, files=digests,
                    outputs=["logits", "features"], features_dim=int(feats.shape[1]), arch=arch, parent=parent,
                    metrics=all_metrics, provenance=dict(provenance or {}), cascade=cascade)
        write_card(tmp, card)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model package %s (%s)", out, card.version)
    return ModelPackage(out, card)


def write_pruning(path: Path, base_arch: Optional[Dict[str, Any]], num_classes: int, history: List[list],
                  removed_blocks: Sequence[str] = ()) -> Path:
    """The pruning file of a pruned package: how ``load_model`` rebuilds it from its base (the
    Torch-Pruning history, then the residual blocks replaced by identities)."""
    path = Path(path)
    path.write_text(strict_json.dumps({"base_arch": base_arch, "num_classes": num_classes, "history": history,
                                "removed_blocks": list(removed_blocks)}), encoding="utf-8")
    return path


def update_metrics(pkg: ModelPackage, metrics: Dict[str, Any]) -> ModelPackage:
    """Merge ``metrics`` into the card (files are unchanged, so their digests stay valid)."""
    pkg.card.metrics.update(metrics)
    write_card(pkg.path, pkg.card)
    return open_package(str(pkg.path))


def arch_name(pkg: ModelPackage) -> str:
    """The card's architecture; a user file inside the package is resolved to its path."""
    if not pkg.card.arch or not pkg.has_weights:
        raise OcapError(f"model package {pkg.path} has no torch form (arch + {WEIGHTS}); it is ONNX-only")
    name = str(pkg.card.arch["name"])
    if name.startswith(USER_ARCH_FILE + ":"):
        return str(pkg.path / USER_ARCH_FILE) + name[len(USER_ARCH_FILE):]
    return name


# measured by save_package from the ONNX file it writes; a re-export measures them anew
EXPORT_METRICS = ("onnx_parity_max_abs_diff", "onnx_parity_scaled_diff", "onnx_bytes", "onnx_opset")


def reexport(pkg: ModelPackage, out: Path, command: str) -> ModelPackage:
    """``pkg`` with its ONNX form exported anew from its torch form (at today's ``OPSET``), into ``out``.
    The weights are the same, so the card keeps what was measured with them; it records the version
    it replaces and ``command``. A new ONNX file is a new version (its digest names it)."""
    if pkg.card.cascade is not None or PRUNING_FILE in pkg.card.files:
        raise OcapError(f"{pkg.path}: only a base package (arch + {WEIGHTS}, no pruning or fallback) is "
                        "re-exported here")
    card = pkg.card
    prov = dict(card.provenance, reexported={"from_version": card.version, "opset": OPSET, "command": command,
                                             "torch": torch.__version__.split("+")[0], "date": utc_now()})
    return save_package(load_model(pkg), out, name=card.name, input_spec=card.input, class_names=card.class_names,
                        arch=card.arch, class_ids=card.class_ids, parent=card.parent, provenance=prov,
                        metrics={k: v for k, v in card.metrics.items() if k not in EXPORT_METRICS},
                        overwrite=True)


def load_model(pkg: ModelPackage) -> nn.Module:
    """Rebuild the torch model of a package (architecture from the card, strict state_dict)."""
    from .zoo import create_model

    kwargs = dict(pkg.card.arch.get("kwargs") or {}) if pkg.card.arch else {}
    if PRUNING_FILE in pkg.card.files:       # a pruned model: build the base, replay its pruning history
        from .blocks import remove_blocks
        from .structural import replay_history

        model = create_model(arch_name(pkg), in_chans=pkg.card.input.shape[0],
                             num_classes=len(pkg.card.class_names), **kwargs)
        try:
            pruning = json.loads((pkg.path / PRUNING_FILE).read_text(encoding="utf-8"))
            history, blocks = pruning["history"], list(pruning.get("removed_blocks") or [])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise OcapError(f"{pkg.path / PRUNING_FILE} is unreadable: {e}") from e
        model = remove_blocks(replay_history(model.eval(), pkg.card.input.shape, history), blocks)
    else:
        model = create_model(arch_name(pkg), in_chans=pkg.card.input.shape[0],
                             num_classes=len(pkg.card.class_ids), **kwargs)
    try:
        state = load_tensors(pkg.weights_path)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise OcapError(f"cannot load {pkg.weights_path} into {arch_name(pkg)}: {e}") from e
    return model.eval()


__all__ = ["CARD", "save_package", "reexport", "load_model", "update_metrics", "arch_name", "write_pruning"]
