"""TensorRT's engine cache under ``[daemon] cache_dir/trt``: one directory per model version (the
serving plane's ``load_model`` gives each version its own). Engines are tens of megabytes each on a
Jetson and nothing else deletes them, so a device that personalizes daily would fill its disk with
engines of models that can never serve again: candidates the gate rejected, versions the store pruned.
``sweep`` removes those; a version that may serve again keeps its engines (a swap back takes seconds,
not the minutes of a rebuild)."""

import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, List

log = logging.getLogger(__name__)


def sweep(root: Path, keep: Iterable[str]) -> List[str]:
    """Remove the version directories under ``root`` that ``keep`` does not name; returns their names,
    sorted. A directory that cannot be removed is logged and left (a later sweep tries again); files
    directly under ``root`` (engines from before per-version directories) are left alone."""
    keep = set(keep)
    try:
        entries = list(os.scandir(str(root)))
    except OSError:
        return []                     # no cache yet (TensorRT never ran), or unreadable: nothing to do
    removed = []
    for e in entries:
        if e.name in keep or not e.is_dir(follow_symlinks=False):
            continue
        try:
            shutil.rmtree(e.path)
        except OSError as err:
            log.warning("TensorRT engine cache: cannot remove %s: %s", e.path, err)
            continue
        removed.append(e.name)
    if removed:
        log.info("TensorRT engine cache: removed the engines of %s (they cannot serve again)", ", ".join(sorted(removed)))
    return sorted(removed)
