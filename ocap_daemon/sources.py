"""The daemon's input sources, made from its ``[source:NAME]`` sections through the source registry
(``ocap_service.sources.SOURCES``), as ``python -m ocap_service`` makes its one source from its flags.

``check_sources`` runs before anything starts, and under ``ocapd --check-config``: each source type
checks what it reads against the disk and the base model (a replay source loads its data in the model's
class space and checks it and its mix against the model's classes; a directory source, its spool). A
problem is one ``ConfigError`` naming the file, the section, the key and what does not fit. A camera's
frames are converted to the model's size and channels, and the camera is opened only at start.

``build_sources`` then makes one thread per section, each feeding ``server.infer``; a frame that does
not fit at run time (a wrong-sized image in a spool directory) is moved aside and reported as one
``frames_rejected`` event and a log line at most once a minute, and the source goes on.
"""

import logging
import math
from typing import Any, Dict, List

import numpy as np

from ocap_core.agreement import budget_to_suggest
from ocap_core.package import Card, open_package
from ocap_service.server import Server
from ocap_service.sources import SOURCES, OptionError, RejectedFrames, SourceContext, ThreadSource

from .config import SOURCE_PREFIX, Config, ConfigError, SourceConfig
from .trigger import held_back_needed

log = logging.getLogger(__name__)
Checked = Dict[str, Dict[str, Any]]         # each source's options with what its check loaded, by name


def _context(cfg: Config, card: Card) -> SourceContext:
    return SourceContext(card, f"[model] base = {cfg.model.base}", lambda key, value: f"{key} = {value}")


def _error(cfg: Config, src: SourceConfig, e: OptionError) -> ConfigError:
    text = f"{cfg.path or '<config>'}: [{SOURCE_PREFIX}{src.name}] {e.key} = {str(e.value)!r}: {e.why}"
    return ConfigError(" ".join(text.splitlines()))


def check_sources(cfg: Config) -> Checked:
    """Check every source against the disk and the base model (``ConfigError`` on the first problem);
    returns what each check loaded (a replay source's data), by source name, for ``build_sources``."""
    if not cfg.sources:
        return {}
    ctx = _context(cfg, open_package(cfg.model.base, verify=False).card)    # load_config has verified it
    checked = {}
    for src in cfg.sources.values():
        try:
            checked[src.name] = SOURCES[src.type].check(src.options, ctx)
        except OptionError as e:
            raise _error(cfg, src, e) from None
    return checked


def replay_shortfalls(cfg: Config, checked: Checked) -> List[str]:
    """Why replayed data cannot support a search within ``[personalize] max_loss``, one line per source
    and class set of its mix (none when another kind of source brings new frames, or nothing is
    searched): the cache holds back a share of distinct frames and the search judges on half of them
    (``judged_images_needed``); with too few the daemon would observe and never personalize. Each line
    says what would do: more images, or the budget the images can judge."""
    p = cfg.personalize
    floor, share = held_back_needed(p)[0], cfg.privacy.held_back_share      # 0: nothing is searched
    if not cfg.sources or any(s.type != "replay" for s in cfg.sources.values()) or not p.enabled or not floor:
        return []
    out: List[str] = []
    for name, got in checked.items():
        labels = got["dataset"].y
        for ids, probs, _ in got["schedule"]:
            classes = sorted({int(k) for k, q in zip(ids, probs) if q > 0})
            n = int(np.isin(labels, classes).sum())
            held = int(n * share)
            allowed = budget_to_suggest(held // 2)
            line = (f"[{SOURCE_PREFIX}{name}] replays {n} images of classes {classes}, of which about {held} would be "
                    f"held back ([privacy] held_back_share = {share:g}), and a {p.max_loss:g}-point budget "
                    f"([personalize] max_loss) is judged on {floor // 2} of {floor} held back: the daemon would "
                    f"observe them and never personalize; replay {math.ceil(floor / share)} or more images of these "
                    f"classes" + (f", or allow max_loss = {allowed:g}" if allowed is not None else ""))
            if held < floor and line not in out:
                out.append(line)
    return out


def build_sources(cfg: Config, server: Server, checked: Checked) -> List[ThreadSource]:
    """One thread per ``[source:NAME]`` section, all feeding ``server.infer`` (``checked``: from
    ``check_sources``); rejected frames are recorded in the server's event log."""
    ctx = _context(cfg, server.base.card)
    out: List[ThreadSource] = []
    for name, sc in cfg.sources.items():
        out.append(SOURCES[sc.type].create(checked[name], ctx, server.infer, RejectedFrames(name, server.events)))
        log.info("source %s: %s", name, sc.type)
    return out
