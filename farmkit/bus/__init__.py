"""Publish/subscribe of wire messages, with the backend chosen by URL::

    bus = open_bus("memory://")               # or "pubsub://my-project" (honours PUBSUB_EMULATOR_HOST)
    bus.ensure_subscription("runner-aapl", "market-data", enable_message_ordering=True)
    handle = bus.subscribe("runner-aapl", lambda m: (print(parse_message(m.data, m.attributes)), m.ack()))
    publish_record(bus, "market-data", bar)   # ordering key = symbol for bars
    bus.close()                               # flushes publishes, stops subscribers

Both backends deliver at least once: a message that is nacked, whose callback raises, or that is not acked
in time comes again, so consumers dedupe (bars on symbol and timestamp).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from farmkit.bus.base import Bus, BusBase, BusError, Message, Subscription, publish_record
from farmkit.errors import ConfigError
from farmkit.settings import backend

__all__ = ["REGISTRY", "Bus", "BusBase", "BusError", "Message", "Subscription", "open_bus", "publish_record"]


def _memory(url: str, **options) -> Bus:
    from farmkit.bus.memory import MemoryBus

    if urlparse(url).netloc or urlparse(url).path:
        raise ConfigError(f"memory:// takes no host or path, got {url!r}")
    return MemoryBus(**options)


def _pubsub(url: str, **options) -> Bus:
    try:
        from farmkit.bus.pubsub import PubSubBus
    except ImportError as exc:
        raise ConfigError(f"{url} needs google-cloud-pubsub ({exc}): pip install 'thefarm[cloud]'") from None
    project = urlparse(url).netloc
    if not project:
        raise ConfigError(f"pubsub URL {url!r} has no project: use pubsub://PROJECT")
    return PubSubBus(project, **options)


# Backends load lazily, so the research core does not need the cloud client installed.
REGISTRY: dict[str, Callable[..., Bus]] = {"memory": _memory, "pubsub": _pubsub}


def open_bus(url: str, **options) -> Bus:
    """Open the bus a URL names: ``memory://`` (in-process) or ``pubsub://PROJECT``.

    ``options`` go to the backend, e.g. ``max_latency=0.05`` (seconds a publish batch may wait).
    """
    return backend(REGISTRY, url, "bus")(url, **options)
