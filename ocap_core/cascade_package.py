"""A specialist package turned into a cascade package (torch-free): the same files, the base's ONNX
file beside them as ``fallback.onnx``, and a card whose ``cascade`` names the base and the threshold.
``ocap prune`` writes cascades itself when its search chooses one; this is for a threshold chosen
elsewhere (``ocap cascade``, tests, benchmarks)."""

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional

from .cascade import FALLBACK_ONNX, cascade_entry
from .errors import OcapError
from .package import ONNX, ModelPackage, open_package, write_card


def cascade_version(specialist_version: str, tau: float) -> str:
    """A cascade's version: its specialist's and the threshold (the same network with another
    threshold, or alone, is another model to the store)."""
    return f"{specialist_version}-c{int(round(float(tau) * 1000)):04d}"


def with_fallback(specialist: ModelPackage, base: ModelPackage, tau: float, out: Path,
                  metrics: Optional[Dict[str, Any]] = None, weight: float = 1.0) -> ModelPackage:
    """Write ``specialist`` served with ``base`` as its fallback below top probability ``tau`` (the
    base's other classes weighted by ``weight``, ``cascade.outside_weight``) into the new directory
    ``out`` (written aside, then renamed into place)."""
    out = Path(out)
    if out.exists():
        raise OcapError(f"output {out} already exists; choose a new directory")
    if specialist.card.cascade is not None:
        raise OcapError(f"{specialist.path} is a cascade already (fallback {specialist.card.cascade['fallback']['version']})")
    if not base.has_onnx or not specialist.has_onnx:
        raise OcapError(f"a cascade needs the ONNX files of both {specialist.path} and {base.path}")
    if tuple(base.card.input.shape) != tuple(specialist.card.input.shape) or \
            base.card.input.to_dict() != specialist.card.input.to_dict():
        raise OcapError(f"{base.path} takes input {base.card.input.to_dict()}, {specialist.path} "
                        f"{specialist.card.input.to_dict()}: a fallback must take the same frames")
    if not set(specialist.card.class_ids) <= set(base.card.class_ids) or \
            list(base.card.class_names) != list(specialist.card.class_names):
        raise OcapError(f"{specialist.path} (classes {specialist.card.class_ids}) is not a model of {base.path}'s classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=str(out.parent)))
    try:
        tmp.chmod(0o755)
        for name in specialist.card.files:
            shutil.copyfile(str(specialist.path / name), str(tmp / name))
        shutil.copyfile(str(base.onnx_path), str(tmp / FALLBACK_ONNX))
        files = dict(specialist.card.files, **{FALLBACK_ONNX: base.card.files[ONNX]})
        card = replace(specialist.card, version=cascade_version(specialist.card.version, tau), files=files,
                       metrics=dict(specialist.card.metrics, **(metrics or {}), tau=float(tau)),
                       cascade=cascade_entry(base.card, tau, weight))
        write_card(tmp, card)
        open_package(str(tmp))                      # the digests hold: nothing half-made is renamed in
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(str(tmp), ignore_errors=True)
        raise
    return open_package(str(out))
