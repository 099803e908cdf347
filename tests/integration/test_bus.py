"""One contract for every bus backend: the in-process bus and Pub/Sub (the real emulator on loopback)."""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid

import pandas as pd
import pytest

from farmkit.bus import BusError, open_bus, publish_record
from farmkit.errors import ConfigError
from farmkit.model import Bar, parse_message
from tests.conftest import need
from tests.pubsub_emulator import pubsub_emulator  # noqa: F401  (the session fixture)

T0 = pd.Timestamp("2025-01-15 14:30", tz="UTC")


def bar(symbol: str = "AAPL", minute: int = 0) -> Bar:
    return Bar(symbol, T0 + pd.Timedelta(minutes=minute), 100 + minute, 101 + minute, 99 + minute,
               100.5 + minute, 1000 + minute, source="test")


def eventually(condition, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll until ``condition()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


class Collector:
    """A callback that records each delivery, then acks it unless ``policy(message, n)`` says otherwise.

    ``policy`` returns "ack", "nack", "raise" or "ignore" (neither ack nor nack: let the deadline pass).
    """

    def __init__(self, policy=lambda message, n: "ack"):
        self.policy, self.messages, self._lock = policy, [], threading.Lock()

    def __call__(self, message) -> None:
        with self._lock:
            self.messages.append(message)
            n = sum(m.message_id == message.message_id for m in self.messages)
        action = self.policy(message, n)
        if action == "raise":
            raise RuntimeError("callback failed on purpose")
        if action in ("ack", "nack"):
            getattr(message, action)()

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)


@pytest.fixture(params=["memory", pytest.param("pubsub", marks=pytest.mark.service)])
def make_bus(request, monkeypatch):
    """``make_bus(**options)``: a bus on the backend under test; later calls connect to the same topics."""
    buses = []
    if request.param == "pubsub":
        need(importlib.util.find_spec("google.cloud.pubsub_v1") is not None,
             "google-cloud-pubsub is not installed (pip install 'thefarm[cloud]')")
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", request.getfixturevalue("pubsub_emulator").host)

    def make(**options):
        if request.param == "memory":
            bus = buses[0].peer(**options) if buses else open_bus("memory://", **options)
        else:
            bus = open_bus("pubsub://farm-local", **options)
        buses.append(bus)
        return bus

    make.backend = request.param
    yield make
    for bus in reversed(buses):
        bus.close()


def names(*kinds: str) -> list[str]:
    """Fresh names: the emulator lives for the whole session."""
    suffix = uuid.uuid4().hex[:8]
    return [f"{kind}-{suffix}" for kind in kinds]


def test_publish_subscribe_round_trip_with_attributes(make_bus):
    bus = make_bus()
    topic, sub = names("market-data", "runner")
    bus.ensure_subscription(sub, topic)
    got = Collector()
    bus.subscribe(sub, got)
    future = publish_record(bus, topic, bar())
    message_id = future.result(timeout=10)
    eventually(lambda: len(got) == 1, what="one delivery")
    message = got.messages[0]
    assert parse_message(message.data, message.attributes) == bar()
    assert message.attributes == {"type": "bar", "symbol": "AAPL"}
    assert message.message_id == message_id and message.ordering_key == "AAPL"
    assert message.publish_time.tzinfo is not None and message.delivery_attempt is None


def test_order_is_kept_per_symbol(make_bus):
    bus = make_bus()
    topic, sub = names("market-data", "ordered")
    bus.ensure_subscription(sub, topic, enable_message_ordering=True)
    handled, lock = [], threading.Lock()

    def handle(message):  # some bars are slow: on an unordered subscription later ones would overtake
        record = parse_message(message.data, message.attributes)
        time.sleep(0.02 if record.volume % 4 == 0 else 0)
        with lock:
            handled.append(record)
        message.ack()

    bus.subscribe(sub, handle)
    for minute in range(15):
        for symbol in ("AAPL", "MSFT"):
            publish_record(bus, topic, bar(symbol, minute))
    eventually(lambda: len(handled) >= 30, what="30 bars handled")
    for symbol in ("AAPL", "MSFT"):
        assert [r for r in handled if r.symbol == symbol] == [bar(symbol, minute) for minute in range(15)]


def test_every_subscription_gets_every_message(make_bus):
    bus = make_bus()
    topic, first, second = names("market-data", "first", "second")
    bus.ensure_subscription(first, topic)
    bus.ensure_subscription(second, topic)
    a, b = Collector(), Collector()
    bus.subscribe(first, a)
    bus.subscribe(second, b)
    ids = {publish_record(bus, topic, bar("AAPL", m)).result(timeout=10) for m in range(5)}
    eventually(lambda: len(a) == 5 and len(b) == 5, what="5 deliveries on each subscription")
    assert {m.message_id for m in a.messages} == {m.message_id for m in b.messages} == ids


def test_nack_and_a_raising_callback_redeliver(make_bus):
    bus = make_bus()
    topic, counted, plain, dead = names("market-data", "counted", "plain", "dead")
    bus.ensure_subscription(counted, topic, dead_letter_topic=dead, max_delivery_attempts=10)
    bus.ensure_subscription(plain, topic)
    policy = lambda message, n: {1: "raise", 2: "nack"}.get(n, "ack")  # noqa: E731
    with_attempts, without = Collector(policy), Collector(policy)
    bus.subscribe(counted, with_attempts)
    bus.subscribe(plain, without)
    message_id = publish_record(bus, topic, bar()).result(timeout=10)
    eventually(lambda: len(with_attempts) == 3 and len(without) == 3, what="3 deliveries on each")
    assert {m.message_id for m in with_attempts.messages + without.messages} == {message_id}
    # Pub/Sub counts delivery attempts only on a subscription with a dead-letter policy.
    assert [m.delivery_attempt for m in with_attempts.messages] == [1, 2, 3]
    assert [m.delivery_attempt for m in without.messages] == [None, None, None]


def test_flow_control_caps_unsettled_messages(make_bus):
    bus = make_bus()
    topic, sub = names("market-data", "capped")
    bus.ensure_subscription(sub, topic)
    held = Collector(lambda message, n: "ignore")  # settled below, one at a time
    bus.subscribe(sub, held, max_messages=3)
    for minute in range(10):
        publish_record(bus, topic, bar("AAPL", minute))
    for settled in range(10):
        eventually(lambda: len(held) > settled, what=f"delivery {settled + 1}")
        assert len(held) - settled <= 3, "more than max_messages unsettled messages in callbacks"
        held.messages[settled].ack()
    assert len({m.message_id for m in held.messages}) == 10


def test_a_message_not_acked_in_time_comes_again(make_bus):
    bus = make_bus()
    topic, sub = names("market-data", "slow")
    bus.ensure_subscription(sub, topic, ack_deadline=10)
    got = Collector(lambda message, n: "ignore" if n == 1 else "ack")
    started = time.monotonic()
    # max_lease=1: the client stops extending the deadline after 1 s, then the 10 s ack deadline runs out.
    bus.subscribe(sub, got, max_lease=1)
    publish_record(bus, topic, bar())
    eventually(lambda: len(got) == 2, timeout=30, what="a redelivery after the ack deadline")
    assert got.messages[0].message_id == got.messages[1].message_id
    assert time.monotonic() - started >= 1


def test_ensure_is_idempotent_and_names_are_checked(make_bus):
    bus = make_bus()
    topic, sub, dead = names("market-data", "twice", "dead")
    for _ in range(2):
        assert bus.ensure_topic(topic) == topic
        assert bus.ensure_subscription(sub, topic, dead_letter_topic=dead) == sub
    got = Collector()
    bus.subscribe(sub, got)
    publish_record(bus, topic, bar())
    eventually(lambda: len(got) == 1, what="one delivery after ensuring twice")
    with pytest.raises(BusError, match="does not exist"):
        bus.subscribe(names("missing")[0], Collector())
    with pytest.raises(BusError, match="invalid topic name 'x'"):
        bus.ensure_topic("x")
    with pytest.raises(BusError, match="between 5 and 100"):
        bus.ensure_subscription(sub, topic, dead_letter_topic=dead, max_delivery_attempts=2)
    with pytest.raises(TypeError, match="bytes"):
        bus.publish(topic, "text")


def test_dead_letter_after_max_attempts(make_bus):
    bus = make_bus()
    topic, sub, dead, dead_sub = names("market-data", "poison", "dead", "dead-reader")
    bus.ensure_subscription(sub, topic, dead_letter_topic=dead, max_delivery_attempts=5)
    bus.ensure_subscription(dead_sub, dead)
    refused, dead_letters = Collector(lambda message, n: "nack"), Collector()
    bus.subscribe(sub, refused)
    bus.subscribe(dead_sub, dead_letters)
    publish_record(bus, topic, bar())
    eventually(lambda: len(dead_letters) == 1, what="the message on the dead-letter topic")
    assert [m.delivery_attempt for m in refused.messages] == [1, 2, 3, 4, 5]
    letter = dead_letters.messages[0]
    assert parse_message(letter.data, letter.attributes) == bar()
    assert letter.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert letter.attributes["CloudPubSubDeadLetterSourceSubscription"] == sub


def test_close_sends_what_is_batched(make_bus):
    reader = make_bus()
    topic, sub = names("market-data", "reader")
    reader.ensure_subscription(sub, topic)
    got = Collector()
    reader.subscribe(sub, got)
    writer = make_bus(max_latency=30, max_batch_messages=1000)  # nothing would go out for 30 s
    futures = [publish_record(writer, topic, bar("AAPL", m)) for m in range(20)]
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 10 and all(f.done() for f in futures)
    eventually(lambda: len(got) == 20, timeout=10, what="20 deliveries after close()")
    with pytest.raises(BusError, match="closed"):
        writer.publish(topic, b"{}")


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known schemes: memory://, pubsub://"):
        open_bus("kafka://localhost")
    with pytest.raises(ConfigError, match="no project"):
        open_bus("pubsub://")
