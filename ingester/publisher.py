"""Batched, retried publishing of wire messages, with per-key order kept.

One sender thread takes messages in the order they were queued, groups up to ``max_messages`` of a topic
(waiting at most ``max_latency`` after the first) and sends the group as one request; a group is sent only
after the previous one was acknowledged, so messages of an ordering key are acknowledged in order. A failed
send is retried with backoff, the same group again, for as long as the publisher runs: nothing is dropped.
What is still queued when ``close(timeout)`` runs out is written to a spill file, and the log says where.

Senders by bus URL scheme: ``pubsub://`` sends each group as one Pub/Sub ``Publish`` call with messages of
many ordering keys (the google-cloud-pubsub client batches per ordering key, which for 10,000 symbols means
10,000 requests); any other bus (``memory://``) goes through :meth:`farmkit.bus.Bus.publish`.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from farmkit.health import Metrics

log = logging.getLogger("ingester.publisher")


@dataclass(frozen=True)
class Outgoing:
    topic: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    queued_at: float          # time.perf_counter() when queued


class Sender(Protocol):
    def send(self, topic: str, messages: list[Outgoing]) -> None:
        """Publish ``messages`` (one topic) in order; raise if any was not accepted."""


class BusSender:
    """Publishes through a :class:`farmkit.bus.Bus` and waits for every future of the group."""

    def __init__(self, bus):
        self.bus = bus

    def send(self, topic: str, messages: list[Outgoing]) -> None:
        futures = [self.bus.publish(topic, m.data, ordering_key=m.ordering_key or None, **m.attributes)
                   for m in messages]
        if hasattr(self.bus, "flush"):
            self.bus.flush()
        for future in futures:
            future.result(timeout=60)


class PubSubSender:
    """One Pub/Sub ``Publish`` request per group; honours ``PUBSUB_EMULATOR_HOST``."""

    def __init__(self, project: str, timeout: float = 30.0):
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.client import PublisherClient as GapicPublisher
        from google.pubsub_v1.types import PubsubMessage

        self.project, self.timeout = project, timeout
        # The batching client (emulator-aware setup) and the plain GAPIC Publish call it is built on.
        self._client = pubsub_v1.PublisherClient()
        self._publish = GapicPublisher.publish.__get__(self._client)
        self._message = PubsubMessage

    def send(self, topic: str, messages: list[Outgoing]) -> None:
        path = self._client.topic_path(self.project, topic)
        batch = [self._message(data=m.data, attributes=m.attributes, ordering_key=m.ordering_key) for m in messages]
        # The library's own retry is off: a failed group is retried here, after a backoff, as a whole.
        self._publish(topic=path, messages=batch, timeout=self.timeout, retry=None)


def open_sender(bus_url: str, bus) -> Sender:
    """The sender for a bus URL: ``pubsub://PROJECT`` sends groups directly, anything else via ``bus``."""
    parsed = urlparse(bus_url)
    if parsed.scheme == "pubsub":
        return PubSubSender(parsed.netloc)
    return BusSender(bus)


class BatchPublisher:
    """Queue messages with :meth:`publish`; a thread sends them in groups. ``on_sent(messages)`` runs
    after each acknowledged group (for counts); failures are logged, counted and retried."""

    def __init__(self, sender: Sender, *, metrics: Metrics | None = None, max_messages: int = 500,
                 max_bytes: int = 8_000_000, max_latency: float = 0.01, spill_dir: Path | None = None,
                 on_sent: Callable[[list[Outgoing]], None] | None = None, max_backoff: float = 5.0):
        self.sender, self.metrics = sender, metrics or Metrics()
        self.max_messages, self.max_bytes, self.max_latency = max_messages, max_bytes, max_latency
        self.spill_dir, self.on_sent, self.max_backoff = spill_dir, on_sent, max_backoff
        self._queue: collections.deque[Outgoing] = collections.deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._give_up_at: float | None = None
        self.failing_since: float | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()
        self.metrics.describe("farm_ingest_publish_errors_total", "counter", "Publish requests that failed "
                              "(each is retried).")
        self.metrics.describe("farm_ingest_publish_latency_seconds", "histogram",
                              "Seconds from a message being queued to its publish being acknowledged.")
        self.metrics.describe("farm_ingest_publish_backlog", "gauge", "Messages queued or in flight.")
        self.metrics.set("farm_ingest_publish_backlog", lambda: self.backlog)

    @property
    def backlog(self) -> int:
        return len(self._queue) + self._in_flight

    def publish(self, topic: str, data: bytes, attributes: dict[str, str], ordering_key: str = "") -> None:
        item = Outgoing(topic, data, attributes, ordering_key, time.perf_counter())
        with self._cond:
            if self._closing:
                raise RuntimeError("publish after close: the publisher is shutting down")
            self._queue.append(item)
            if len(self._queue) == 1 or len(self._queue) >= self.max_messages:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is acknowledged; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._queue or self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
        return True

    def close(self, timeout: float = 30.0) -> int:
        """Send what is queued (for up to ``timeout`` seconds), stop; spill what is left. Returns the
        number of messages spilled (0 when everything went out)."""
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 5)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        if left:
            self._spill(left)
        return len(left)

    # -- the sender thread -----------------------------------------------------------------------------

    def _take(self) -> list[Outgoing] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait(0.5)
            first = self._queue[0]
            deadline = first.queued_at + self.max_latency
            while (len(self._queue) < self.max_messages and not self._closing
                   and (wait := deadline - time.perf_counter()) > 0):
                self._cond.wait(wait)
            group, size = [], 0
            while self._queue and len(group) < self.max_messages:
                item = self._queue[0]
                if item.topic != first.topic or (group and size + len(item.data) > self.max_bytes):
                    break
                group.append(self._queue.popleft())
                size += len(item.data)
            self._in_flight = len(group)
            return group

    def _run(self) -> None:
        while (group := self._take()) is not None:
            if not self._send(group):
                with self._cond:   # closing and out of time: back to the queue, close() spills it
                    self._queue.extendleft(reversed(group))
                    self._in_flight = 0
                    self._cond.notify_all()
                return
            done = time.perf_counter()
            for item in group:
                self.metrics.observe("farm_ingest_publish_latency_seconds", done - item.queued_at)
            with self._cond:
                self.sent += len(group)
                self._in_flight = 0
                self._cond.notify_all()
            if self.on_sent is not None:
                try:
                    self.on_sent(group)
                except Exception:  # noqa: BLE001 - counting must not stop publishing
                    log.exception("on_sent callback failed")

    def _send(self, group: list[Outgoing]) -> bool:
        backoff, attempt = 0.05, 0
        while True:
            attempt += 1
            try:
                self.sender.send(group[0].topic, group)
                if self.failing_since is not None:
                    log.info("publishing to %s works again after %d attempt(s)", group[0].topic, attempt)
                self.failing_since = None
                return True
            except Exception as exc:  # noqa: BLE001 - every failure is retried, none is fatal
                self.metrics.inc("farm_ingest_publish_errors_total", topic=group[0].topic)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                if attempt == 1 or attempt % 20 == 0:
                    log.error("publishing %d message(s) to %s failed (attempt %d): %s: %s; retrying (check the "
                              "bus: FARM_BUS, PUBSUB_EMULATOR_HOST, credentials)", len(group), group[0].topic,
                              attempt, type(exc).__name__, exc)
            with self._cond:
                if self._give_up_at is not None and time.monotonic() + backoff > self._give_up_at:
                    return False
                self._cond.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _spill(self, items: list[Outgoing]) -> None:
        directory = self.spill_dir or Path.cwd()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"unpublished-{time.strftime('%Y%m%dT%H%M%S')}-{id(self):x}.jsonl"
        with open(path, "w") as out:
            for item in items:
                out.write(json.dumps({"topic": item.topic, "ordering_key": item.ordering_key,
                                      "attributes": item.attributes, "data": item.data.decode()}) + "\n")
        log.error("%d message(s) could not be published before shutdown; they are in %s (one JSON per line: "
                  "topic, ordering_key, attributes, data) — republish them once the bus is back", len(items), path)
