"""The daemon's input sources, made from its ``[source:NAME]`` sections.

``check_sources`` runs before anything starts, and under ``ocapd --check-config``: every file and
directory a source reads exists, and what it will deliver fits the base model (the image size of the
model card, gray or RGB; replay labels and mix classes among the model's classes). Replay data is loaded
in the model's class space: an image folder's sub-folders named as its classes (or by class id) take
those ids, and labels outside it are the data loader's error. A problem is one ``ConfigError`` naming
the file, the section, the key and what does not fit. A camera's frames are converted to the model's
size and channels, and the camera is opened only at start.

``build_sources`` then makes one thread per section, each feeding ``server.infer``; a frame that does
not fit at run time (a wrong-sized image in a spool directory) is moved aside and reported as one
``frames_rejected`` event and a log line at most once a minute, and the source goes on.
"""

import logging
import os
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ocap_core.data import Dataset, load_dataset
from ocap_core.errors import OcapError
from ocap_core.package import Card, open_package
from service.server import Server
from service.sources import (
    CameraSource,
    DirectorySource,
    RejectedFrames,
    ReplaySource,
    data_misfit,
    parse_mix,
)

from .config import SOURCE_PREFIX, Config, ConfigError, SourceConfig

log = logging.getLogger(__name__)
FASHION_MNIST = ("fashion-mnist", "fmnist")


def _error(cfg: Config, src: SourceConfig, key: str, value: Any, why: str) -> ConfigError:
    text = f"{cfg.path or '<config>'}: [{SOURCE_PREFIX}{src.name}] {key} = {str(value)!r}: {why}"
    return ConfigError(" ".join(text.splitlines()))


def _replay_data(cfg: Config, src: SourceConfig, card: Card) -> Dataset:
    spec, split, mix = src.options["data"], src.options["split"], src.options["mix"]
    if spec not in FASHION_MNIST and not Path(spec).exists():
        where = "" if Path(spec).is_absolute() else f" (a relative path, from {os.getcwd()})"
        raise _error(cfg, src, "data", spec, f"no such file or directory{where}")
    try:                                    # in the model's class space: folder names map to its class ids
        data = load_dataset(spec, split, class_names=card.class_names)
    except OcapError as e:                  # the loader's hint names ocap's flag; here it is a key
        why = str(e).replace("use --split all", "use split = all")
        raise _error(cfg, src, "data", spec, f"cannot load its {split} split for the base model "
                                             f"([model] base = {cfg.model.base}): {why}") from None
    if not len(data):
        raise _error(cfg, src, "data", spec, f"its {split} split holds no images")
    why = data_misfit(data.x, data.y, card)
    if why:
        raise _error(cfg, src, "data", spec, f"does not fit the base model ([model] base = {cfg.model.base}): {why}")
    if mix:
        wanted = {int(k) for ids, _, _ in parse_mix(mix, len(card.class_names)) for k in ids}
        missing = sorted(wanted - {int(k) for k in np.unique(data.y)})
        if missing:
            raise _error(cfg, src, "mix", mix, f"the {split} split of data = {spec} has no images of "
                                               f"class(es) {missing}")
    return data


def _check_directory(cfg: Config, src: SourceConfig) -> None:
    spool = Path(src.options["spool"])
    if not spool.is_dir():
        raise _error(cfg, src, "spool", spool, "not a directory" if spool.exists() else "no such directory")
    if not os.access(str(spool), os.R_OK | os.W_OK | os.X_OK):
        raise _error(cfg, src, "spool", spool, f"this user (uid {os.geteuid()}) cannot read and remove files "
                                               "in it")
    for key in ("done_dir", "reject_dir"):
        d = src.options[key]
        if d is not None and Path(d).exists() and not Path(d).is_dir():
            raise _error(cfg, src, key, d, "exists and is not a directory")


def check_sources(cfg: Config) -> Dict[str, Dataset]:
    """Check every source against the disk and the base model (``ConfigError`` on the first problem);
    returns the replay data sets by source name, loaded once for ``build_sources``."""
    if not cfg.sources:
        return {}
    card = open_package(cfg.model.base, verify=False).card      # load_config has verified it
    data = {}
    for src in cfg.sources.values():
        if src.type == "replay":
            data[src.name] = _replay_data(cfg, src, card)
        elif src.type == "directory":
            _check_directory(cfg, src)
    return data


def build_sources(cfg: Config, server: Server, data: Dict[str, Dataset]) -> List[Any]:
    """One thread per ``[source:NAME]`` section, all feeding ``server.infer`` (``data``: from
    ``check_sources``); rejected frames are recorded in the server's event log."""
    num_classes = len(server.base.card.class_names)
    out: List[Any] = []
    for name, sc in cfg.sources.items():
        o = sc.options
        rejects = RejectedFrames(name, server.events)
        if sc.type == "replay":
            d = data[name]
            mix = parse_mix(o["mix"] or ",".join(f"{k}:1" for k in np.unique(d.y)) + "@1h", num_classes)
            out.append(ReplaySource(d.x, d.y, lambda img: server.infer(img[None]), o["rate"], mix,
                                    rejects=rejects))
        elif sc.type == "directory":
            out.append(DirectorySource(Path(o["spool"]), server.infer, Path(o["reject_dir"]),
                                       Path(o["done_dir"]) if o["done_dir"] else None, poll=o["interval"],
                                       rejects=rejects))
        elif sc.type == "camera":
            out.append(CameraSource(o["device"], server.infer, tuple(server.slot.current().card.input.shape),
                                    rate=o["rate"], rejects=rejects))
        log.info("source %s: %s", name, sc.type)
    return out
