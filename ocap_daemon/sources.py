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
from typing import Any, Dict, List

from ocap_core.package import Card, open_package
from ocap_service.server import Server
from ocap_service.sources import SOURCES, OptionError, RejectedFrames, SourceContext, ThreadSource

from .config import SOURCE_PREFIX, Config, ConfigError, SourceConfig

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


def build_sources(cfg: Config, server: Server, checked: Checked) -> List[ThreadSource]:
    """One thread per ``[source:NAME]`` section, all feeding ``server.infer`` (``checked``: from
    ``check_sources``); rejected frames are recorded in the server's event log."""
    ctx = _context(cfg, server.base.card)
    out: List[ThreadSource] = []
    for name, sc in cfg.sources.items():
        out.append(SOURCES[sc.type].create(checked[name], ctx, server.infer, RejectedFrames(name, server.events)))
        log.info("source %s: %s", name, sc.type)
    return out
