"""The in-process bus: Pub/Sub's delivery semantics without a server.

Every subscription gets every message published after it was created; a message nacked, whose callback
raised, or not acked within ``max_lease`` + the ack deadline comes again; on an ordered subscription an
ordering key has one message out at a time (so redelivery keeps order); after ``max_delivery_attempts``
a message moves to the dead-letter topic. Two ``open_bus("memory://")`` are two buses: share one, or ``peer()``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque, namedtuple
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from functools import partial

from farmkit.bus.base import BusBase, BusError, Message, check_dead_letter, check_name, check_publish, run_callback

CALLBACK_THREADS = 10  # as Pub/Sub's Python subscriber: callbacks of one subscription run concurrently


_Envelope = namedtuple("_Envelope", "message_id data attributes ordering_key publish_time")


class _Lease:
    def __init__(self, envelope: _Envelope, deadline: float, handle: "_Handle"):
        self.envelope, self.deadline, self.handle = envelope, deadline, handle


class _Sub:
    def __init__(self, name, ack_deadline, dead_letter_topic, max_delivery_attempts, ordered):
        self.name, self.ack_deadline, self.ordered = name, ack_deadline, ordered
        self.dead_letter_topic, self.max_delivery_attempts = dead_letter_topic, max_delivery_attempts
        self.ready: deque[_Envelope] = deque()
        self.leases: dict[str, _Lease] = {}
        self.attempts: Counter[str] = Counter()
        self.busy_keys: set[str] = set()
        self.next_deadline = float("inf")


class MemoryBus(BusBase):
    """In-process bus. ``max_latency`` > 0 batches publishes (sent when the batch is full, after that many
    seconds, on ``flush()`` or on ``close()``); the default sends at once."""

    def __init__(self, *, max_latency: float = 0.0, max_batch_messages: int = 100):
        self._max_latency, self._max_batch = max_latency, max_batch_messages
        self._cond = threading.Condition()
        self._topics: dict[str, list[str]] = {}  # topic -> its subscriptions
        self._subs: dict[str, _Sub] = {}
        self._ids = itertools.count(1)
        self._batch: list[tuple] = []
        self._timer: threading.Timer | None = None
        self._handles: list[_Handle] = []
        self._closed = False

    def peer(self, **options) -> "MemoryBus":
        """Another connection to the same topics and subscriptions, as a second process would open."""
        other = MemoryBus(**options)
        other._cond, other._topics, other._subs, other._ids = self._cond, self._topics, self._subs, self._ids
        return other

    def ensure_topic(self, topic: str) -> str:
        check_name("topic", topic)
        with self._cond:
            self._topics.setdefault(topic, [])
        return topic

    def ensure_subscription(self, subscription: str, topic: str, *, ack_deadline: int = 10,
                            dead_letter_topic: str | None = None, max_delivery_attempts: int = 5,
                            enable_message_ordering: bool = False) -> str:
        check_name("subscription", subscription)
        check_dead_letter(dead_letter_topic, max_delivery_attempts)
        for name in filter(None, (topic, dead_letter_topic)):
            self.ensure_topic(name)
        with self._cond:
            if subscription not in self._subs:  # an existing subscription keeps its settings, as on Pub/Sub
                self._subs[subscription] = _Sub(subscription, ack_deadline, dead_letter_topic,
                                                max_delivery_attempts, enable_message_ordering)
                self._topics[topic].append(subscription)
        return subscription

    def publish(self, topic: str, data: bytes, *, ordering_key: str | None = None, **attributes: str) -> Future:
        check_publish(data, attributes)
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise BusError("publish on a closed bus")
            self._batch.append((topic, data, attributes, ordering_key or "", future))
            send_now = self._max_latency <= 0 or len(self._batch) >= self._max_batch
            if not send_now and self._timer is None:
                self._timer = threading.Timer(self._max_latency, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if send_now:
            self.flush()
        return future

    def flush(self, timeout: float | None = None) -> None:
        with self._cond:
            batch, self._batch = self._batch, []
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
            results = [self._deliver(*item[:4]) for item in batch]
        for (*_, future), result in zip(batch, results):  # outside the lock: done-callbacks may publish
            future.set_exception(result) if isinstance(result, Exception) else future.set_result(result)

    def subscribe(self, subscription: str, callback, *, max_messages: int = 1000,
                  max_lease: float = 3600.0) -> "_Handle":
        with self._cond:
            if self._closed:
                raise BusError("subscribe on a closed bus")
            if subscription not in self._subs:
                raise BusError(f"subscription {subscription!r} does not exist; call ensure_subscription first")
            handle = _Handle(self, self._subs[subscription], callback, max_messages, max_lease)
            self._handles.append(handle)
        handle._thread.start()
        return handle

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()

    # -- under self._cond ----------------------------------------------------------------------------

    def _deliver(self, topic, data, attributes, ordering_key) -> str | Exception:
        if topic not in self._topics:
            return BusError(f"topic {topic!r} does not exist; call ensure_topic({topic!r}) first")
        envelope = _Envelope(str(next(self._ids)), data, dict(attributes), ordering_key,
                             datetime.now(timezone.utc))
        for name in self._topics[topic]:
            self._subs[name].ready.append(envelope)
        self._cond.notify_all()
        return envelope.message_id

    def _take(self, sub: _Sub, handle: "_Handle") -> tuple[_Lease, int] | None:
        for i, envelope in enumerate(sub.ready):
            if not (sub.ordered and envelope.ordering_key in sub.busy_keys):
                del sub.ready[i]
                break
        else:
            return None
        if sub.ordered and envelope.ordering_key:
            sub.busy_keys.add(envelope.ordering_key)
        sub.attempts[envelope.message_id] += 1
        lease = _Lease(envelope, time.monotonic() + handle.max_lease + sub.ack_deadline, handle)
        sub.leases[envelope.message_id] = lease
        sub.next_deadline = min(sub.next_deadline, lease.deadline)
        handle.outstanding += 1
        return lease, sub.attempts[envelope.message_id]

    def _expire(self, sub: _Sub) -> float | None:
        """Take back leases past their deadline; seconds until the next one expires (None: no lease)."""
        now = time.monotonic()
        if now >= sub.next_deadline:
            for lease in [lease for lease in sub.leases.values() if lease.deadline <= now]:
                self._end_lease(sub, lease, redeliver=True)
            sub.next_deadline = min((lease.deadline for lease in sub.leases.values()), default=float("inf"))
        return None if sub.next_deadline == float("inf") else max(0.0, sub.next_deadline - now)

    def _end_lease(self, sub: _Sub, lease: _Lease, *, redeliver: bool) -> None:
        envelope, message_id = lease.envelope, lease.envelope.message_id
        del sub.leases[message_id]
        lease.handle.outstanding -= 1
        sub.busy_keys.discard(envelope.ordering_key)
        attempts = sub.attempts[message_id]
        if redeliver and not (sub.dead_letter_topic and attempts >= sub.max_delivery_attempts):
            sub.ready.appendleft(envelope)  # first in line again; its key stays in order (one out at a time)
        else:  # done with for good: acked, or dead-lettered
            del sub.attempts[message_id]
            if redeliver:
                self._deliver(sub.dead_letter_topic, envelope.data, {
                    **envelope.attributes, "CloudPubSubDeadLetterSourceDeliveryCount": str(attempts),
                    "CloudPubSubDeadLetterSourceSubscription": sub.name}, "")
        self._cond.notify_all()

    def _settle(self, sub: _Sub, lease: _Lease, ack: bool) -> None:
        with self._cond:
            # An ack for a lease that already expired (or was settled) is ignored, as on Pub/Sub.
            if sub.leases.get(lease.envelope.message_id) is lease:
                self._end_lease(sub, lease, redeliver=not ack)


class _Handle:
    """A running subscriber: a dispatcher thread taking messages, a thread pool running the callback."""

    def __init__(self, bus: MemoryBus, sub: _Sub, callback, max_messages: int, max_lease: float):
        self._bus, self._sub, self._callback = bus, sub, callback
        self.max_messages, self.max_lease = max_messages, max_lease
        self.outstanding, self._stopped = 0, False
        self._pool = ThreadPoolExecutor(CALLBACK_THREADS, thread_name_prefix=f"bus-{sub.name}")
        self._thread = threading.Thread(target=self._dispatch, name=f"bus-{sub.name}-dispatch", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    def _dispatch(self) -> None:
        cond = self._bus._cond
        while True:
            with cond:
                while not self._stopped:
                    timeout = self._bus._expire(self._sub)
                    if self.outstanding < self.max_messages:
                        taken = self._bus._take(self._sub, self)
                        if taken:
                            break
                    cond.wait(timeout)
                if self._stopped:
                    return
            try:
                self._pool.submit(self._run, *taken)
            except RuntimeError:  # cancelled between taking and submitting: hand it back
                self._bus._settle(self._sub, taken[0], False)
                return

    def _run(self, lease: _Lease, attempt: int) -> None:
        envelope, sub = lease.envelope, self._sub
        settle = partial(self._bus._settle, sub, lease)
        message = Message(envelope.data, dict(envelope.attributes), envelope.message_id, envelope.publish_time,
                          attempt if sub.dead_letter_topic else None, envelope.ordering_key,
                          partial(settle, True), partial(settle, False))
        if self._stopped:  # taken just before cancel(): hand it back at once
            message.nack()
        else:
            run_callback(self._callback, message, sub.name)

    def cancel(self) -> None:
        with self._bus._cond:
            self._stopped = True
            # Nobody extends these leases any more: they come back after the ack deadline, as on Pub/Sub.
            deadline = time.monotonic() + self._sub.ack_deadline
            for lease in self._sub.leases.values():
                if lease.handle is self:
                    lease.deadline = min(lease.deadline, deadline)
            self._sub.next_deadline = min(self._sub.next_deadline, deadline)
            self._bus._cond.notify_all()
        self._pool.shutdown(wait=False)

    def close(self, timeout: float | None = 30.0) -> None:
        self.cancel()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True)
