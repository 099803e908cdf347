"""/metrics of the services is Prometheus' text format as prometheus-client writes and reads it: every
value exact, every label and help text escaped, each metric under its declared type."""

from prometheus_client.parser import text_string_to_metric_families

from farmkit.health import Metrics
from runner.health import render_metrics


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_runner_that_processed_millions_of_bars_says_exactly_how_many():
    report = {"kernel_running": True, "ready": True, "bars_received": 1_234_567, "bars_processed": 1_234_567,
              "status": {"messages": {"routed": 9_876_543}}}
    found = samples(render_metrics(report, {"agent": "a"}))
    assert found[("farm_bars_processed_total", (("agent", "a"),))] == 1_234_567
    assert found[("farm_messages_total", (("agent", "a"), ("outcome", "routed")))] == 9_876_543


def test_runner_metrics_have_their_declared_types():
    report = {"kernel_running": True, "ready": False, "bars_received": 3, "fmel_backlog": 2,
              "bar_ages": {"AAPL": 1.5}, "status": {"stale_symbols": {}, "stale_decisions": 0}}
    kinds = {name: f.type for name, f in families(render_metrics(report, {"agent": "a"})).items()}
    assert kinds["farm_bars_received"] == "counter" and kinds["farm_fmel_backlog_bars"] == "gauge"
    assert kinds["farm_runner_bar_age_seconds"] == "gauge" and kinds["farm_ready"] == "gauge"


def test_labels_and_help_texts_with_quotes_backslashes_and_newlines_survive():
    metrics = Metrics({"service": "ingester"})
    metrics.describe("farm_test_total", "counter", 'Counts "things"\nacross lines \\ and more.')
    metrics.inc("farm_test_total", 2, feed='a "quoted" \\ feed\nnext')
    metrics.set("farm_test_gauge", lambda: 0.5, shard="0")
    metrics.observe("farm_test_seconds", 0.003, feed="x")
    metrics.observe("farm_test_seconds", 7.0, feed="x")
    text = metrics.render()
    found = families(text)
    assert found["farm_test"].documentation == 'Counts "things"\nacross lines \\ and more.'
    (sample,) = found["farm_test"].samples
    assert sample.labels == {"service": "ingester", "feed": 'a "quoted" \\ feed\nnext'} and sample.value == 2
    assert found["farm_test_gauge"].samples[0].value == 0.5
    hist = {(s.name, s.labels.get("le")): s.value for s in found["farm_test_seconds"].samples}
    assert found["farm_test_seconds"].type == "histogram"
    assert hist[("farm_test_seconds_bucket", "0.0025")] == 0 and hist[("farm_test_seconds_bucket", "0.005")] == 1
    assert hist[("farm_test_seconds_bucket", "+Inf")] == 2 and hist[("farm_test_seconds_count", None)] == 2
    assert hist[("farm_test_seconds_sum", None)] == 7.003
