"""The bus's base types: :class:`Message`, the :class:`Bus` and :class:`Subscription` protocols,
:class:`BusBase` for backends, the name and publish checks both backends apply, and
:func:`publish_record`. Backends (``memory``, ``pubsub``) build on this module; users open a bus
with :func:`farmkit.bus.open_bus`."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from farmkit.errors import FarmError

__all__ = ["Bus", "BusBase", "BusError", "Message", "Subscription", "check_dead_letter", "check_name",
           "check_publish", "publish_record", "run_callback"]

log = logging.getLogger(__name__)
MIN_DELIVERY_ATTEMPTS, MAX_DELIVERY_ATTEMPTS = 5, 100  # Pub/Sub's limits for a dead-letter policy
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


class BusError(FarmError, RuntimeError):
    """A bus call failed: a missing topic or subscription, a bad name, a closed bus."""


def check_name(kind: str, name: str) -> str:
    """Topic and subscription names follow Pub/Sub's rules on every backend, so nothing breaks on deploy."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.lower().startswith("goog"):
        raise BusError(f"invalid {kind} name {name!r}: 3-255 characters, starting with a letter, of letters, "
                       "digits and - _ . ~ + %, not starting with 'goog'")
    return name


def check_dead_letter(dead_letter_topic: str | None, max_delivery_attempts: int) -> None:
    if dead_letter_topic is not None:
        check_name("topic", dead_letter_topic)
        if not MIN_DELIVERY_ATTEMPTS <= max_delivery_attempts <= MAX_DELIVERY_ATTEMPTS:
            raise BusError(f"max_delivery_attempts must be between {MIN_DELIVERY_ATTEMPTS} and "
                           f"{MAX_DELIVERY_ATTEMPTS}, got {max_delivery_attempts}")


def check_publish(data: bytes, attributes: Mapping[str, str]) -> None:
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, got {type(data).__name__} (encode it, e.g. bar.to_wire())")
    bad = sorted(k for k, v in attributes.items() if not isinstance(v, str))
    if bad:
        raise TypeError(f"attribute values must be strings; not: {', '.join(bad)}")


@dataclass(frozen=True, eq=False)
class Message:
    """One delivery of a message. Call ``ack()`` once handled, or ``nack()`` to have it delivered again.

    ``delivery_attempt`` counts deliveries (1 the first time) on a subscription with a dead-letter
    policy, and is None without one (as on Pub/Sub).
    """

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    publish_time: datetime
    delivery_attempt: int | None
    ordering_key: str
    _ack: Callable[[], None] = field(repr=False)
    _nack: Callable[[], None] = field(repr=False)

    def ack(self) -> None:
        self._ack()

    def nack(self) -> None:
        self._nack()


def run_callback(callback: Callable[[Message], None], message: Message, subscription: str) -> None:
    """Run a subscriber's callback; one that raises is logged and its message nacked (redelivered)."""
    try:
        callback(message)
    except Exception:
        log.exception("callback on subscription %r raised; message %s will be redelivered",
                      subscription, message.message_id)
        message.nack()


class Subscription(Protocol):
    """A running subscriber. ``cancel()`` stops it; ``close()`` also waits for callbacks in progress."""

    def cancel(self) -> None: ...
    def close(self, timeout: float | None = 30.0) -> None: ...
    @property
    def running(self) -> bool: ...


class Bus(Protocol):
    """What every backend does; see :mod:`farmkit.bus.memory` and :mod:`farmkit.bus.pubsub`."""

    def publish(self, topic: str, data: bytes, *, ordering_key: str | None = None, **attributes: str):
        """Send ``data`` to every subscription of ``topic``; returns a future of the message id."""

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message published so far has been sent (or failed)."""

    def subscribe(self, subscription: str, callback: Callable[[Message], None], *, max_messages: int = 1000,
                  max_lease: float = 3600.0) -> Subscription:
        """Call ``callback`` on a thread pool for each message; at most ``max_messages`` unacked at once.

        A message neither acked nor nacked is held (its ack deadline extended) for ``max_lease`` seconds,
        then redelivered once the subscription's ack deadline has passed.
        """

    def ensure_topic(self, topic: str) -> str: ...

    def ensure_subscription(self, subscription: str, topic: str, *, ack_deadline: int = 10,
                            dead_letter_topic: str | None = None, max_delivery_attempts: int = 5,
                            enable_message_ordering: bool = False) -> str:
        """Create the subscription (and its topics) unless it exists; an existing one is left as it is."""

    def close(self) -> None: ...


class BusBase:
    """What backends share: ``with open_bus(url) as bus:`` closes the bus (flushes, stops subscribers)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish_record(bus: Bus, topic: str, record):
    """Publish a :class:`~farmkit.model.Bar` or :class:`~farmkit.model.NewsItem` in its wire form.

    Bars go with ordering key = symbol, so one symbol's bars arrive in order on an ordered subscription.
    """
    key = getattr(record, "symbol", None) if record.attributes()["type"] == "bar" else None
    return bus.publish(topic, record.to_wire(), ordering_key=key, **record.attributes())
