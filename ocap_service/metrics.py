"""Prometheus metrics of the serving plane, made at scrape time from the state the server keeps anyway
(request counters and latency buckets, the class log's totals, the served and base models' cards, the
teacher's counters, the sample cache), rendered as OpenMetrics text (``ocapctl metrics``) or in the
Prometheus text format that node_exporter's textfile collector reads (it refuses OpenMetrics' ``info``
and ``stateset`` types). Nothing here listens on a network: the text goes out over the control socket
or into a file (``ocap_daemon/metrics.py``).

``Metrics`` is a ``CollectorRegistry`` of its own, never the process-global one; the control plane adds
its collector to it. Every name starts with ``ocap_``, counters end in ``_total``, units are in names."""

from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from prometheus_client import exposition
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .errors import ServiceError

PREFIX = "ocap"
# format -> (renderer, content type); "prometheus" is the classic text format 0.0.4
FORMATS: Dict[str, Any] = {
    "openmetrics": (openmetrics.generate_latest, openmetrics.CONTENT_TYPE_LATEST),
    "prometheus": (exposition.generate_latest, "text/plain; version=0.0.4; charset=utf-8"),
}


class Metrics:
    """The metrics registry of one server: collectors added once, collected at each render."""

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if process:     # ocap_process_resident_memory_bytes, _cpu_seconds_total, _open_fds, ... (Linux /proc)
            ProcessCollector(namespace=PREFIX, registry=self.registry)

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self, fmt: str = "openmetrics") -> str:
        """Every collector's metrics as text in ``fmt`` (``openmetrics`` or ``prometheus``)."""
        if fmt not in FORMATS:
            raise ServiceError(f"metrics format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return FORMATS[fmt][0](self.registry).decode("utf-8")


def counter(name: str, doc: str, labels: Sequence[str] = (), values: Iterable[tuple] = ()) -> CounterMetricFamily:
    """A counter family ``ocap_NAME_total`` with one sample per (label values..., value) tuple."""
    fam = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))
    for *lv, v in values:
        fam.add_metric([str(x) for x in lv], v)
    return fam


def gauge(name: str, doc: str, labels: Sequence[str] = (), values: Iterable[tuple] = (),
          unit: str = "") -> GaugeMetricFamily:
    """A gauge family ``ocap_NAME`` (ending in ``_UNIT`` when a unit is given) with one sample per tuple;
    a None value is left out (a reading the device does not have)."""
    fam = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels), unit=unit)
    for *lv, v in values:
        if v is not None:
            fam.add_metric([str(x) for x in lv], v)
    return fam


class ServingCollector(Collector):
    """The serving plane's metrics, read from ``server`` (a ``ocap_service.server.Server``) at each collect."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        s = self.server
        names = s.base.card.class_names
        stats = s.stats.snapshot()
        yield counter("requests", "Batches the served model answered (a predict command, a source's batch).",
                      values=[(stats["batches"],)])
        yield counter("request_failures", "Batches the served model failed on.", values=[(stats["failed"],)])
        yield counter("frames", "Frames classified by the served model.", values=[(stats["frames"],)])
        yield _latency(s.stats.histogram())
        yield from _predictions(s.class_log.totals(), names)
        yield from _models(s)
        tc = s.teacher_counts()
        for key, name, doc in (
                ("checked", "teacher_checks", "Frames the base model also checked since the served model was installed."),
                ("inside", "teacher_checks_kept",
                 "Of the teacher's checks, the frames of a class the served model has."),
                ("disagreed", "teacher_disagreements",
                 "Of the teacher's checks of a kept class, the frames the served model answered otherwise.")):
            yield counter(name, doc, values=[(tc[key],)])
        yield counter("background_skipped_frames", "Frames not offered to the sample cache or the teacher: "
                      "its queue was full.", values=[(s.background_skipped,)])
        cache = s.cache.counts()
        yield gauge("cache_samples", "Samples in the cache per class and split (train, or val: held back).",
                    ["split", "class_id", "class"],
                    [(split, k, names[k], n) for split, per in sorted(cache.items()) for k, n in sorted(per.items())])
        yield gauge("cache_bytes", "Bytes of cached samples on disk.", values=[(s.cache.bytes,)], unit="bytes")
        yield gauge("cache_quota_bytes", "The sample cache's byte quota ([privacy] cache_quota).",
                    values=[(s.cache.quota,)], unit="bytes")
        yield gauge("class_log_flush_timestamp_seconds", "When the class log last wrote its counts to the database.",
                    values=[(s.class_log.last_flush,)], unit="seconds")


def _latency(h: Any) -> HistogramMetricFamily:
    return HistogramMetricFamily(f"{PREFIX}_request_duration_seconds",
                                 "Time of a batch in the served model, since start.",
                                 buckets=[(floatToGoString(le), n) for le, n in h.buckets], sum_value=h.sum_s,
                                 unit="seconds")


def _predictions(totals: Dict[str, Dict[str, Any]], names: List[str]) -> Iterator[Any]:
    """Per origin (served answers, teacher checks) and class of the base label space, since start."""
    yield counter("predictions", "Predictions per class since start: the served model's answers (origin served) "
                  "and the base model's checks while a pruned model serves (origin teacher).",
                  ["origin", "class_id", "class"],
                  [(o, k, name, t["classes"].get(k, 0)) for o, t in totals.items() for k, name in enumerate(names)])
    fallback = totals["served"].get("fallback", {})
    yield counter("fallback_predictions", "Served answers given by a cascade's base (the specialist was unsure: "
                  "top probability under its threshold) per class, since start; a share that rises is early drift.",
                  ["class_id", "class"], [(k, name, fallback.get(k, 0)) for k, name in enumerate(names)])
    yield counter("low_confidence_predictions", "Predictions whose top probability was under [log] low_confidence.",
                  ["origin"], [(o, t["low_confidence"]) for o, t in totals.items()])


def _models(s: Any) -> Iterator[Any]:
    """The served and the base model: version, size, classes; the served one may be the base."""
    roles = [("served", s.served), ("base", s.base)]
    info = InfoMetricFamily(f"{PREFIX}_model", "The served and the base model's name and version.",
                            labels=["role"])
    for role, m in roles:
        info.add_metric([role], {"name": m.card.name, "version": m.version, "parent": m.card.parent or ""})
    yield info
    yield gauge("model_macs", "Multiply-accumulates per frame (the model card's figure).", ["role"],
                [(role, _card_figure(m, "macs")) for role, m in roles])
    yield gauge("model_params", "Parameters (the model card's figure).", ["role"],
                [(role, _card_figure(m, "params")) for role, m in roles])
    yield gauge("model_classes", "Classes the model answers (its outputs).", ["role"],
                [(role, len(m.class_ids)) for role, m in roles])
    yield counter("model_swaps", "Swaps of the served model since start.", values=[(s.slot.swaps,)])


def _card_figure(model: Any, key: str) -> Optional[float]:
    """A figure of the model card's metrics, None when the card has none."""
    return (model.card.metrics or {}).get(key)
