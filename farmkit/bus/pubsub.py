"""Google Cloud Pub/Sub behind the bus interface; the emulator when ``PUBSUB_EMULATOR_HOST`` is set.

What Pub/Sub guarantees and this adapter passes on: at-least-once delivery; order per ordering key on a
subscription created with ``enable_message_ordering`` (the publisher always has ordering enabled, and
a key whose publish failed is resumed so later publishes are not stuck); dead-lettering after
``max_delivery_attempts``. The client library keeps extending ack deadlines of messages a callback has
not settled, for ``max_lease`` seconds. The emulator does not apply subscription filters and does not
redeliver in order after a nack.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading

from google.api_core import exceptions as google_errors
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import pubsub_v1

from farmkit.bus.base import BusBase, BusError, Message, check_dead_letter, check_name, check_publish, run_callback
from farmkit.errors import MissingCredentials

log = logging.getLogger(__name__)


class PubSubBus(BusBase):
    """Pub/Sub in one project. Publishes are batched: up to ``max_batch_messages`` messages or
    ``max_batch_bytes`` bytes, sent at the latest ``max_latency`` seconds after the first one."""

    def __init__(self, project: str, *, max_latency: float = 0.01, max_batch_messages: int = 100,
                 max_batch_bytes: int = 1_000_000):
        self.project = project
        self.emulator_host = os.environ.get("PUBSUB_EMULATOR_HOST")  # the client library reads it too
        batch = pubsub_v1.types.BatchSettings(max_messages=max_batch_messages, max_bytes=max_batch_bytes,
                                              max_latency=max_latency)
        try:
            self._publisher = pubsub_v1.PublisherClient(
                batch_settings=batch,
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
            self._subscriber = pubsub_v1.SubscriberClient()
        except DefaultCredentialsError as exc:
            raise MissingCredentials(
                f"pubsub://{project} needs Google credentials ({exc}): run `gcloud auth application-default "
                "login` or set GOOGLE_APPLICATION_CREDENTIALS; for the emulator set PUBSUB_EMULATOR_HOST"
            ) from None
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future] = set()
        self._handles: list[PubSubSubscription] = []
        self._closed = False

    def _topic(self, topic: str) -> str:
        return self._publisher.topic_path(self.project, check_name("topic", topic))

    def _subscription(self, subscription: str) -> str:
        return self._subscriber.subscription_path(self.project, check_name("subscription", subscription))

    def ensure_topic(self, topic: str) -> str:
        try:
            self._publisher.create_topic(name=self._topic(topic))
        except google_errors.AlreadyExists:
            pass
        return topic

    def ensure_subscription(self, subscription: str, topic: str, *, ack_deadline: int = 10,
                            dead_letter_topic: str | None = None, max_delivery_attempts: int = 5,
                            enable_message_ordering: bool = False) -> str:
        check_dead_letter(dead_letter_topic, max_delivery_attempts)
        request = {"name": self._subscription(subscription), "topic": self._topic(self.ensure_topic(topic)),
                   "ack_deadline_seconds": ack_deadline, "enable_message_ordering": enable_message_ordering}
        if dead_letter_topic:
            request["dead_letter_policy"] = {"dead_letter_topic": self._topic(self.ensure_topic(dead_letter_topic)),
                                             "max_delivery_attempts": max_delivery_attempts}
        try:
            self._subscriber.create_subscription(request=request)
        except google_errors.AlreadyExists:
            pass  # an existing subscription keeps its settings
        return subscription

    def publish(self, topic: str, data: bytes, *, ordering_key: str | None = None, **attributes: str):
        check_publish(data, attributes)
        if self._closed:
            raise BusError("publish on a closed bus")
        path = self._topic(topic)
        future = self._publisher.publish(path, data, ordering_key=ordering_key or "", **attributes)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(lambda done: self._published(done, path, ordering_key))
        return future

    def _published(self, future, path: str, ordering_key: str | None) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.exception() is not None and ordering_key:
            # A failed ordered publish pauses its key; resume so the next bar for the symbol can go.
            log.error("publish to %s with key %r failed: %s", path, ordering_key, future.exception())
            self._publisher.resume_publish(path, ordering_key)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every publish so far; a batch is sent at the latest ``max_latency`` after it began."""
        with self._lock:
            pending = list(self._pending)
        concurrent.futures.wait(pending, timeout)

    def subscribe(self, subscription: str, callback, *, max_messages: int = 1000,
                  max_lease: float = 3600.0) -> "PubSubSubscription":
        if self._closed:
            raise BusError("subscribe on a closed bus")
        path = self._subscription(subscription)
        try:  # checked here so a typo is an error now, not a stream that ends in a background thread
            self._subscriber.get_subscription(subscription=path)
        except google_errors.NotFound:
            raise BusError(f"subscription {subscription!r} does not exist in project {self.project!r}; "
                           "call ensure_subscription(subscription, topic) first") from None

        def deliver(received) -> None:
            message = Message(received.data, dict(received.attributes), received.message_id,
                              received.publish_time, received.delivery_attempt, received.ordering_key,
                              received.ack, received.nack)
            # Exceptions are caught there: the client library would also end the subscription's future.
            run_callback(callback, message, subscription)

        flow = pubsub_v1.types.FlowControl(max_messages=max_messages, max_lease_duration=max_lease)
        handle = PubSubSubscription(self._subscriber.subscribe(path, callback=deliver, flow_control=flow))
        with self._lock:
            self._handles.append(handle)
        return handle

    def close(self, timeout: float | None = 30.0) -> None:
        """Send what is batched, wait for it, stop every subscriber."""
        if self._closed:
            return
        self._closed = True
        self._publisher.stop()  # sends every open batch now instead of after max_latency
        self.flush(timeout)
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close(timeout)
        self._subscriber.close()


class PubSubSubscription:
    """A streaming pull. ``close()`` waits until the stream and its callbacks have stopped."""

    def __init__(self, future):
        self._future = future

    @property
    def running(self) -> bool:
        return not self._future.done()

    def cancel(self) -> None:
        self._future.cancel()

    def close(self, timeout: float | None = 30.0) -> None:
        self._future.cancel()
        try:
            self._future.result(timeout)
        except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
            pass

    def exception(self):
        """What ended the stream (e.g. the subscription was deleted), or None while it runs or after cancel."""
        return self._future.exception(0) if self._future.done() else None
