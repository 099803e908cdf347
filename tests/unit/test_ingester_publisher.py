import threading

from farmkit.health import Metrics
from ingester.publisher import BatchPublisher


class FlakySender:
    """Fails the first ``failures`` sends; records what was accepted, in order."""

    def __init__(self, failures=0):
        self.failures, self.accepted, self.calls = failures, [], 0
        self.lock = threading.Lock()

    def send(self, topic, messages):
        with self.lock:
            self.calls += 1
            if self.failures:
                self.failures -= 1
                raise ConnectionError("bus down")
            self.accepted.extend((topic, m.ordering_key, m.data) for m in messages)


def test_batches_in_order_and_retries_without_loss(tmp_path):
    sender, metrics = FlakySender(failures=3), Metrics()
    publisher = BatchPublisher(sender, metrics=metrics, max_messages=7, max_latency=0.001, spill_dir=tmp_path)
    for i in range(100):
        publisher.publish("market-data", str(i).encode(), {"type": "bar"}, f"S{i % 3}")
    assert publisher.flush(timeout=30)
    assert [int(d) for _, _, d in sender.accepted] == list(range(100))
    assert metrics.value("farm_ingest_publish_errors_total") == 3
    assert publisher.close(timeout=5) == 0 and not list(tmp_path.iterdir())


def test_what_cannot_be_sent_by_close_is_spilled_and_reported(tmp_path):
    publisher = BatchPublisher(FlakySender(failures=10**9), max_latency=0.001, spill_dir=tmp_path, max_backoff=0.01)
    publisher.publish("market-data", b'{"x": 1}', {"type": "bar"}, "AAPL")
    assert not publisher.flush(timeout=0.2)
    assert publisher.close(timeout=0.2) == 1
    (spill,) = tmp_path.iterdir()
    assert '"ordering_key": "AAPL"' in spill.read_text()


def test_topics_are_sent_separately():
    sender = FlakySender()
    publisher = BatchPublisher(sender, max_latency=0.01)
    publisher.publish("a-topic", b"1", {}, "")
    publisher.publish("b-topic", b"2", {}, "")
    publisher.flush(10)
    publisher.close()
    assert [t for t, _, _ in sender.accepted] == ["a-topic", "b-topic"] and sender.calls == 2
