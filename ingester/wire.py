"""Alpaca stream and REST payloads -> wire records (:class:`~farmkit.model.Bar`, :class:`~farmkit.model.NewsItem`,
:class:`Trade`). A payload that cannot be converted raises :class:`~farmkit.model.MalformedMessage` with the reason.

Updated bars: Alpaca sends ``"u"`` with the same start time as the bar it corrects (a late trade). It goes on
the wire as a bar with ``revision`` = 1, 2, ... (the n-th correction this process saw for that minute);
a first bar has no ``revision`` (0). Backfilled bars have ``source: "backfill"`` and revision 0.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd

from farmkit.errors import DataError
from farmkit.model import Bar, MalformedMessage, NewsItem

SOURCES = {"stocks": "alpaca_stock", "crypto": "alpaca_crypto"}


def timestamp(value, name: str = "t") -> pd.Timestamp:
    """A msgpack Timestamp (what alpaca-py's raw stream gives), a datetime or an ISO string, as UTC."""
    if hasattr(value, "to_unix_nano"):
        return pd.Timestamp(value.to_unix_nano(), unit="ns", tz="UTC")
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise MalformedMessage(f"field {name!r} is not a timestamp: {value!r}") from None
    if stamp is pd.NaT:
        raise MalformedMessage(f"field {name!r} is missing")
    if stamp.tzinfo is None:
        raise MalformedMessage(f"field {name!r} has no time zone: {value!r}")
    return stamp.tz_convert("UTC")


def stream_bar(msg: dict, source: str, revision: int = 0) -> Bar:
    """A stream bar message (``T`` b, u or d; fields ``S o h l c v t``) as a :class:`Bar`."""
    if isinstance(msg.get("t"), str):  # Alpaca sends msgpack timestamps; alpaca-py itself drops these
        raise MalformedMessage(f"bar for {msg.get('S')!r} has 't' as a string, not a msgpack timestamp")
    try:
        return Bar(msg["S"], timestamp(msg["t"]), msg["o"], msg["h"], msg["l"], msg["c"], msg["v"],
                   source=source, revision=revision)
    except KeyError as exc:
        raise MalformedMessage(f"bar message has no field {exc.args[0]!r}: {msg!r}"[:300]) from None
    except DataError as exc:
        raise MalformedMessage(str(exc)) from None


def rest_bar(symbol: str, row: dict) -> Bar:
    """A bar from the historical REST API (``t`` an ISO string), marked ``source: backfill``."""
    try:
        return Bar(symbol, timestamp(row["t"]), row["o"], row["h"], row["l"], row["c"], row["v"], source="backfill")
    except KeyError as exc:
        raise MalformedMessage(f"REST bar for {symbol} has no field {exc.args[0]!r}") from None
    except DataError as exc:
        raise MalformedMessage(str(exc)) from None


def rest_news(item: dict) -> NewsItem:
    """A news article from the REST API as a :class:`NewsItem` (``source: alpaca_news``)."""
    try:
        created = timestamp(item["created_at"], "created_at")
        updated = timestamp(item.get("updated_at") or item["created_at"], "updated_at")
        return NewsItem(item["id"], item.get("headline") or "", item.get("summary") or "",
                        tuple(item.get("symbols") or ()), created, updated, item.get("url") or "", "alpaca_news")
    except KeyError as exc:
        raise MalformedMessage(f"news item has no field {exc.args[0]!r}") from None


@dataclass(frozen=True)
class Trade:
    """One trade from the stream, on its own topic (the ``market-data`` topic carries bars only)."""

    symbol: str
    timestamp: pd.Timestamp
    price: float
    size: float
    id: int | str | None
    exchange: str
    conditions: tuple[str, ...]
    tape: str
    source: str

    def to_wire(self) -> bytes:
        return json.dumps({"type": "trade", "symbol": self.symbol,
                           "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
                           "price": self.price, "size": self.size, "id": self.id, "exchange": self.exchange,
                           "conditions": list(self.conditions), "tape": self.tape, "source": self.source}).encode()

    def attributes(self) -> dict[str, str]:
        return {"type": "trade", "symbol": self.symbol}


def stream_trade(msg: dict, source: str) -> Trade:
    try:
        return Trade(msg["S"], timestamp(msg["t"]), float(msg["p"]), float(msg["s"]), msg.get("i"),
                     str(msg.get("x") or ""), tuple(msg.get("c") or ()), str(msg.get("z") or ""), source)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"trade message is incomplete ({exc}): {msg!r}"[:300]) from None


class Revisions:
    """Counts corrections per (symbol, minute) for the last ``keep`` minutes seen."""

    def __init__(self, keep: int = 200_000):
        self._seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._keep = keep

    def next(self, symbol: str, minute: pd.Timestamp) -> int:
        key = (symbol, minute.value)
        revision = self._seen.get(key, 0) + 1
        self._seen[key] = revision
        self._seen.move_to_end(key)
        while len(self._seen) > self._keep:
            self._seen.popitem(last=False)
        return revision
