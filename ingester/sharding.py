"""Which replica serves which feed and symbol: rendezvous (highest-random-weight) hashing.

Alpaca allows one stream connection per feed per account, so replicas split the work instead of
duplicating it. The unit of work is a ``(feed, symbol)`` pair — or a whole feed with ``by="feed"``, the
setting for one account: then each feed has exactly one connection in the whole deployment. Every unit
goes to exactly one of ``count`` shards; when the replica count changes from N to N+1 only the units that
move to the new replica change hands (about 1/(N+1) of them), and none move between old replicas.

    >>> owner(("stocks", "AAPL"), 3)
    1
    >>> mine = assign([("stocks", s) for s in symbols], index=ordinal("ingester-2"), count=3)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from farmkit.errors import ConfigError

Unit = tuple[str, str]              # (feed, symbol); symbol "*" stands for the whole feed


def _weight(unit: Unit, shard: int) -> int:
    digest = hashlib.blake2b(f"{unit[0]}\x00{unit[1]}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(unit: Unit, count: int) -> int:
    """The shard (0 .. count-1) that serves ``unit``; the same on every replica and every run."""
    if count < 1:
        raise ConfigError(f"the shard count must be at least 1, got {count}")
    return max(range(count), key=lambda shard: _weight(unit, shard))


def assign(units: Iterable[Unit], index: int, count: int) -> list[Unit]:
    """The units of ``units`` that shard ``index`` of ``count`` serves, in their given order."""
    if not 0 <= index < count:
        raise ConfigError(f"shard index {index} is not in 0..{count - 1}: set FARM_INGEST_SHARD_INDEX below "
                          f"FARM_INGEST_SHARD_COUNT ({count}), or scale the StatefulSet to match")
    return [unit for unit in units if owner(unit, count) == index]


def units_for(feeds: dict[str, tuple[str, ...]], by: str) -> list[Unit]:
    """The units to shard: one per (feed, symbol) with ``by="symbol"``, one per feed with ``by="feed"``
    (and always one per feed whose symbols are ``*``: a wildcard subscription cannot be split)."""
    if by not in ("feed", "symbol"):
        raise ConfigError(f"FARM_INGEST_SHARD_BY must be feed or symbol, got {by!r}")
    units: list[Unit] = []
    for feed, symbols in feeds.items():
        if not symbols:
            continue
        if by == "feed" or "*" in symbols:
            units.append((feed, "*"))
        else:
            units.extend((feed, symbol) for symbol in symbols)
    return units


def ordinal(hostname: str | None) -> int | None:
    """A StatefulSet pod's ordinal from its host name (``ingester-2`` -> 2), or None if it has none."""
    match = re.fullmatch(r".+-(\d+)", hostname or "")
    return int(match.group(1)) if match else None
