"""The serving plane's metrics over a real Unix socket: a real ``Server`` (onnxruntime, SQLite, sample
cache) answers predictions, and its ``metrics`` scrape parses with prometheus-client's parsers, with the
names, types, label sets and values that follow from what was sent."""

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from ocap_core.data import load_dataset
from ocap_service.client import Client, CommandFailed
from ocap_service.request_stats import LATENCY_BUCKETS_S, RequestStats
from ocap_service.server import ServerConfig, build_server
from tests.helpers import WAIT_S

SERVING_TYPES = {
    "ocap_requests": "counter", "ocap_request_failures": "counter", "ocap_frames": "counter",
    "ocap_request_duration_seconds": "histogram", "ocap_predictions": "counter",
    "ocap_low_confidence_predictions": "counter", "ocap_model": "info", "ocap_model_macs": "gauge",
    "ocap_model_params": "gauge", "ocap_model_classes": "gauge", "ocap_model_swaps": "counter",
    "ocap_teacher_checks": "counter", "ocap_teacher_checks_kept": "counter", "ocap_teacher_disagreements": "counter",
    "ocap_background_skipped_frames": "counter", "ocap_cache_samples": "gauge", "ocap_cache_bytes": "gauge",
    "ocap_cache_quota_bytes": "gauge", "ocap_class_log_flush_timestamp_seconds": "gauge",
    "ocap_process_resident_memory_bytes": "gauge",
}


def scrape(client, fmt="openmetrics"):
    """{family name: family} of one scrape over the socket, parsed by prometheus-client."""
    res = client.call("metrics", format=fmt)
    parse = parse_openmetrics if fmt == "openmetrics" else parse_prometheus
    assert res["format"] == fmt and "charset=utf-8" in res["content_type"]
    return {f.name: f for f in parse(res["text"])}


def value(families, name, sample=None, **labels):
    """The value of the sample ``sample`` (default: the family's name) whose labels include ``labels``."""
    want = sample or name
    found = [s.value for s in families[name].samples if s.name == want and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, families[name].samples)
    return found[0]


@pytest.fixture(scope="module")
def frames():
    test = load_dataset("fashion-mnist", "test")
    return test.x[:40]


@pytest.fixture
def server(tmp_path):
    srv = build_server("fmnist-cnn", tmp_path / "state", tmp_path / "s.sock", ServerConfig(cache_per_class=32))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_scrape_counts_what_was_sent(server, frames, tmp_path):
    names = server.base.card.class_names
    with Client(tmp_path / "s.sock") as c:
        before = scrape(c)
        assert {n: before[n].type for n in SERVING_TYPES} == SERVING_TYPES
        answered = [c.predict(x)["class_id"] for x in frames]
        assert server.wait_idle(WAIT_S)
        after = scrape(c)
    sent = {k: answered.count(k) for k in set(answered)}
    assert len(sent) >= 3                                       # several classes, so the labels matter
    for k, name in enumerate(names):
        grew = (value(after, "ocap_predictions", "ocap_predictions_total", origin="served", class_id=str(k))
                - value(before, "ocap_predictions", "ocap_predictions_total", origin="served", class_id=str(k)))
        assert grew == sent.get(k, 0), name
        sample = [s for s in after["ocap_predictions"].samples if s.labels["class_id"] == str(k)
                  and s.labels["origin"] == "served"][0]
        assert sample.labels == {"origin": "served", "class_id": str(k), "class": name}
    assert {s.labels["origin"] for s in after["ocap_predictions"].samples} == {"served", "teacher"}
    assert value(after, "ocap_requests", "ocap_requests_total") - value(before, "ocap_requests", "ocap_requests_total") == 40
    assert value(after, "ocap_frames", "ocap_frames_total") == 40
    assert value(after, "ocap_request_failures", "ocap_request_failures_total") == 0
    # the histogram: cumulative buckets, +Inf and _count equal to the batches answered
    buckets = [(s.labels["le"], s.value) for s in after["ocap_request_duration_seconds"].samples
               if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets][-1] == "+Inf" and len(buckets) == len(LATENCY_BUCKETS_S) + 1
    assert [n for _, n in buckets] == sorted(n for _, n in buckets) and buckets[-1][1] == 40
    assert value(after, "ocap_request_duration_seconds", "ocap_request_duration_seconds_count") == 40
    assert value(after, "ocap_request_duration_seconds", "ocap_request_duration_seconds_sum") > 0
    # the model and the cache, as the server has them
    card = server.served.card
    info = {s.labels["role"]: s.labels for s in after["ocap_model"].samples}
    assert info["served"]["version"] == info["base"]["version"] == card.version and info["served"]["name"] == card.name
    assert value(after, "ocap_model_macs", role="served") == card.metrics["macs"]
    assert value(after, "ocap_model_classes", role="served") == 10
    cached = server.cache.counts()
    assert sum(cached["train"].values()) + sum(cached["val"].values()) > 0
    for split, per in cached.items():
        for k, n in per.items():
            assert value(after, "ocap_cache_samples", split=split, class_id=str(k), **{"class": names[k]}) == n
    assert value(after, "ocap_cache_bytes") == server.cache.bytes > 0


def test_the_prometheus_text_format_carries_the_same_samples(server, frames, tmp_path):
    """node_exporter's textfile collector reads the classic format only: the same samples, the OpenMetrics
    types mapped (info and stateset become gauges)."""
    with Client(tmp_path / "s.sock") as c:
        for x in frames[:5]:
            c.predict(x)
        assert server.wait_idle(WAIT_S)
        om, prom = scrape(c), scrape(c, "prometheus")

    def samples(families):       # CPU time, memory and the flush time move between two scrapes
        return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families.values() for s in f.samples
                if not s.name.startswith("ocap_process_") and not s.name.endswith("_timestamp_seconds")}

    assert samples(om) == samples(prom)
    assert prom["ocap_model_info"].type == "gauge" and prom["ocap_requests"].type == "counter"


def test_a_bad_format_is_refused_and_the_connection_goes_on(server, tmp_path):
    with Client(tmp_path / "s.sock") as c:
        with pytest.raises(CommandFailed, match="format must be one of openmetrics, prometheus"):
            c.call("metrics", format="json")
        assert "ocap_requests" in scrape(c)


def test_the_latency_histogram_buckets_include_their_bound():
    st = RequestStats()
    for ms in (0.5, 0.7, 3.0, 20_000.0):                         # 0.5 ms lies on the first bound
        st.record(1, ms)
    st.record_failure()
    h = st.histogram()
    assert h.buckets[0] == (0.0005, 1) and dict(h.buckets)[0.005] == 3
    assert h.buckets[-1] == (float("inf"), 4) == (float("inf"), h.count)
    assert h.sum_s == pytest.approx((0.5 + 0.7 + 3.0 + 20_000.0) / 1e3)
    assert dict(h.buckets)[10.0] == 3                            # 20 s is only in +Inf


def test_class_log_totals_count_per_origin(tmp_path):
    from ocap_service.class_log import ClassLog

    log = ClassLog(tmp_path / "ocap.db", low_confidence=0.5)
    try:
        log.add(np.array([1, 1, 3]), np.array([0.9, 0.4, 0.8]), "v1")
        log.add([3], [0.2], "v1", origin="teacher")
        log.flush()                                              # totals are not the pending rows: a flush keeps them
        log.add([1], [0.9], "v2")
        assert log.totals() == {"served": {"classes": {1: 3, 3: 1}, "low_confidence": 1},
                                "teacher": {"classes": {3: 1}, "low_confidence": 1}}
    finally:
        log.close()
