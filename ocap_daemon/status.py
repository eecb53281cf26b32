"""What the controller shows: the ``daemon`` part of ``ocapctl status`` and the one status line that
systemd's ``STATUS=``, the watchdog's log and the demo print. Read-only: the policy thread may clear
the worker or the probation at any time, so each reference is read once."""

from typing import TYPE_CHECKING, Any, Dict, List

from .deployer import Phase
from .stability import format_set

if TYPE_CHECKING:                       # the controller imports this module
    from .controller import Controller


def describe(ctl: "Controller") -> Dict[str, Any]:
    """The controller's state as JSON for ``ocapctl status``."""
    st, worker, pb = ctl.trigger.last_stability, ctl.worker, ctl.probation
    now = ctl.clock()
    return {"phase": ctl.phase.value, "paused": ctl.paused, "status_line": status_line(ctl),
            "stability": None if st is None else {"stable": st.stable, "streak": st.streak, "needed": st.needed,
                                                  "js": st.js, "classes": sorted(st.classes), "text": st.describe()},
            "worker": None if worker is None else worker.describe(),
            "probation": None if pb is None else {
                "version": pb.version, "since": pb.since, "previous": pb.previous,
                "seconds_left": pb.seconds_left(ctl.cfg.probation.duration, now)},
            "cooldown_s": ctl.trigger.cooldown_left(), "last_error": ctl.last_error,
            "worker_crashes": {"in_a_row": ctl.trigger.crashes, "last": ctl.trigger.last_crash},
            "last_outcome": ctl.last_outcome}


def cut_words(text: str, limit: int = 200) -> str:
    """``text`` cut at a word boundary before ``limit`` characters, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    return (head[:head.rfind(" ")] if " " in head else head).rstrip(",;:") + " …"


def status_line(ctl: "Controller") -> str:
    """One line: the phase, then what serves (and its probation and drift figures) or what the trigger
    waits for, then the last outcome or the running worker's step."""
    cfg, server = ctl.cfg, ctl.server
    parts = [ctl.phase.value + (" (paused)" if ctl.paused else "")]
    served = server.served
    if served is not server.base:
        m = served.card.metrics or {}
        red = m.get("mac_reduction_per_frame") or m.get("mac_reduction")
        per = " per frame, the base answering what it doubts" if served.base is not None else ""
        parts.append(f"serving {served.version} for {format_set(served.class_ids)}"
                     + (f" ({red:.1f}x fewer MACs{per})" if red else ""))
        pb = ctl.probation
        if pb is not None:
            parts.append(f"probation {pb.seconds_left(cfg.probation.duration, ctl.clock()):.0f} s left")
        teacher, _ = server.window(cfg.drift.window, origin="teacher")
        n = sum(teacher.values())
        if n:
            out = sum(v for k, v in teacher.items() if k not in set(served.class_ids)) / n
            parts.append(f"teacher: {100 * out:.1f}% outside (limit "
                         f"{100 * cfg.drift.outside_limit(ctl.drift_baseline):.1f}%)")
    else:
        parts += _waiting(ctl)
    worker, outcome = ctl.worker, ctl.last_outcome
    if worker is None and outcome and ctl.phase is Phase.OBSERVING:
        wait = ctl.trigger.cooldown_left()
        parts.append(f"last: {cut_words(outcome, 160)}" + (f" (next try in {wait:.0f} s at the earliest)" if wait > 0 else ""))
    if worker is not None:
        last = worker.last
        if last.get("event") == "search_level":
            step = (f"search {last['mac_reduction']:.1f}x -{last['loss_pp']:.2f} pp "
                    f"({'within' if last['accepted'] else 'over'} {cfg.personalize.max_loss:g})")
        else:
            step = f"{last.get('stage') or last.get('event', '')}" + (f" epoch {last['epoch']}" if "epoch" in last else "")
        parts.append(" ".join(w for w in ("worker", worker.state, step) if w) + worker.note)
    return "; ".join(parts)


def _waiting(ctl: "Controller") -> List[str]:
    """On the base model: the stability verdict, the cache's fill of its classes, what the trigger waits for."""
    st = ctl.trigger.last_stability
    if st is None:
        return []
    parts = [st.describe()]
    if st.classes:
        fill = ctl.server.cache_counts()["train"]
        parts.append("cache " + ",".join(f"{k}:{fill.get(k, 0)}" for k in sorted(st.classes))
                     + f"/{ctl.cfg.personalize.min_samples_per_class}")
    if ctl.last_wait and ctl.worker is None:
        parts.append(f"waiting: {ctl.last_wait}")
    return parts
