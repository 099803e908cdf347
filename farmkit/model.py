"""Frozen market records and their wire form: UTF-8 JSON, one message per bar or news item.

>>> bar = Bar("AAPL", pd.Timestamp("2025-01-15 14:30", tz="UTC"), 150.25, 151.0, 150.1, 150.75, 1_000_000)
>>> parse_message(bar.to_wire(), bar.attributes()) == bar
True

``parse_message`` is the one gate between the bus and a strategy: anything it returns is a valid record,
anything else raises :class:`MalformedMessage` with the reason (consumers ack and record those, so a bad
message never loops).
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd

from farmkit.errors import DataError, FarmError

__all__ = ["Bar", "Decision", "MalformedMessage", "NewsItem", "OrderEvent", "parse_message"]


class Decision(NamedTuple):
    """What a strategy decided on a bar, and why: one entry of an FMEL record's ``decisions``.
    ``orders`` are the refs of the orders it placed (empty for a hold)."""

    action: str
    symbol: str | None
    size: float | None
    reason: str | None
    confidence: float | None
    signals: dict | None
    orders: list

    def to_dict(self) -> dict:
        return self._asdict()


class OrderEvent(NamedTuple):
    """One notification of one order, as the recorder saw it at bar ``bar`` (0-based in the run):
    one entry of an FMEL record's ``actions``. Dates are backtrader's float dates; ``filled_size``
    is what this notification executed (0 if nothing), at ``fill_price``."""

    bar: int
    ref: int
    symbol: str
    event: str               # submitted, accepted, partial, filled, cancelled, expired, margin, rejected
    side: str                # buy | sell
    type: str                # market, limit, stop, ...
    size: float
    price: float | None
    created_at: float
    filled_size: float
    fill_price: float | None
    commission: float
    executed_at: float | None
    reason: str | None


class MalformedMessage(FarmError, ValueError):
    """A bus message that is not a valid bar or news item; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"malformed message: {reason}")


def _utc(value, name: str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts is pd.NaT:
        raise DataError(f"{name} is missing (NaT)")
    # Naive timestamps in Python code are taken as UTC; on the wire a zone is required (see _timestamp).
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Bar:
    """One OHLCV bar; ``timestamp`` is the bar's start in UTC; ``revision`` > 0 for a corrected bar.

    Invalid prices raise :class:`~farmkit.errors.DataError` here, so a ``Bar`` is always valid.
    """

    symbol: str
    timestamp: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float
    source: str = ""
    revision: int = 0

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "timestamp", _utc(self.timestamp, "timestamp"))
        for name in ("open", "high", "low", "close", "volume"):
            try:
                value = float(getattr(self, name))
            except (TypeError, ValueError):
                raise DataError(f"{name} is not a number: {getattr(self, name)!r}", source=self.symbol) from None
            if not math.isfinite(value):
                raise DataError(f"{name} is not finite: {value}", source=self.symbol)
            if value < 0 or (value == 0 and name != "volume"):
                raise DataError(f"{name} must be {'>= 0' if name == 'volume' else '> 0'}, got {value}",
                                source=self.symbol)
            set_(self, name, value)
        if not self.symbol:
            raise DataError("symbol is empty")
        if self.high < self.low:
            raise DataError(f"high {self.high} < low {self.low}", source=self.symbol)
        for name in ("open", "close"):
            if not self.low <= getattr(self, name) <= self.high:
                raise DataError(f"{name} {getattr(self, name)} is outside [low {self.low}, high {self.high}]",
                                source=self.symbol)

    def to_wire(self) -> bytes:
        body = {"type": "bar", "symbol": self.symbol, "timestamp": _iso(self.timestamp),
                "open": self.open, "high": self.high, "low": self.low, "close": self.close,
                "volume": int(self.volume) if self.volume.is_integer() else self.volume,
                "source": self.source}
        if self.revision:  # omitted when 0, so the common case is exactly the documented wire form
            body["revision"] = self.revision
        return json.dumps(body, allow_nan=False).encode()

    def attributes(self) -> dict[str, str]:
        return {"type": "bar", "symbol": self.symbol}


@dataclass(frozen=True)
class NewsItem:
    """One news article, as Alpaca's news API gives it; timestamps in UTC."""

    id: int | str
    headline: str
    summary: str
    symbols: tuple[str, ...]
    created_at: pd.Timestamp
    updated_at: pd.Timestamp
    url: str
    source: str

    def __post_init__(self):
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "created_at", _utc(self.created_at, "created_at"))
        object.__setattr__(self, "updated_at", _utc(self.updated_at, "updated_at"))

    def to_wire(self) -> bytes:
        return json.dumps({"type": "news", "id": self.id, "headline": self.headline, "summary": self.summary,
                           "symbols": list(self.symbols), "created_at": _iso(self.created_at),
                           "updated_at": _iso(self.updated_at), "url": self.url, "source": self.source}).encode()

    def attributes(self) -> dict[str, str]:
        return {"type": "news", "symbol": ",".join(self.symbols)}


def _field(body: dict, name: str, default=...):
    if name in body:
        return body[name]
    if default is ...:
        raise MalformedMessage(f"{body.get('type')} message has no field {name!r}")
    return default


def _string(body: dict, name: str, default=...) -> str:
    value = _field(body, name, default)
    if not isinstance(value, str):
        raise MalformedMessage(f"field {name!r} is not a string: {_short(value)}")
    return value


# No listed instrument trades above this price or volume in one bar: a bigger number on the wire is a
# broken producer (or a hostile one), and accepting it would poison every indicator that sees it.
MAX_PRICE = 1e9
MAX_VOLUME = 1e15
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3


def _number(body: dict, name: str) -> float:
    value = _field(body, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedMessage(f"field {name!r} is not a number: {_short(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise MalformedMessage(f"field {name!r} is too large for a number: {_short(value)}") from None
    if not math.isfinite(value):
        raise MalformedMessage(f"field {name!r} is not finite: {value!r}")
    return value


def _short(value) -> str:
    """A field's value for an error message: at most about 80 characters, whatever the value."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__}>"


def _bounded(values: dict) -> dict:
    for name, value in values.items():
        limit, what = (MAX_VOLUME, "volume") if name == "volume" else (MAX_PRICE, "price")
        if value > limit:
            raise MalformedMessage(f"{what} {name}={value:g} is beyond {limit:g}: not a real {what}")
    return values


def _timestamp(body: dict, name: str, default=...) -> pd.Timestamp:
    text = _field(body, name, default)
    if not isinstance(text, str):
        raise MalformedMessage(f"field {name!r} is not an ISO 8601 string: {_short(text)}")
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError, OverflowError):
        raise MalformedMessage(f"field {name!r} is not an ISO 8601 timestamp: {_short(text)}") from None
    if ts is pd.NaT:
        raise MalformedMessage(f"field {name!r} is not a timestamp: {_short(text)}")
    if ts.tzinfo is None:
        raise MalformedMessage(f"field {name!r} has no time zone: {_short(text)} (expected e.g. 2025-01-15T14:30:00Z)")
    return ts.tz_convert("UTC")


def _bar(body: dict) -> Bar:
    revision = _field(body, "revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise MalformedMessage(f"field 'revision' is not a non-negative integer: {_short(revision)}")
    values = _bounded({name: _number(body, name) for name in ("open", "high", "low", "close", "volume")})
    try:
        return Bar(_string(body, "symbol"), _timestamp(body, "timestamp"), **values,
                   source=_string(body, "source", ""), revision=revision)
    except DataError as exc:
        raise MalformedMessage(str(exc)) from None


def _news(body: dict) -> NewsItem:
    id_ = _field(body, "id")
    if isinstance(id_, bool) or not isinstance(id_, (int, str)) or id_ == "":
        raise MalformedMessage(f"field 'id' is not an integer or a non-empty string: {_short(id_)}")
    symbols = _field(body, "symbols")
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        raise MalformedMessage(f"field 'symbols' is not a list of strings: {_short(symbols)}")
    created = _timestamp(body, "created_at")
    return NewsItem(id_, _string(body, "headline"), _string(body, "summary", ""), tuple(symbols), created,
                    _timestamp(body, "updated_at", _iso(created)), _string(body, "url", ""),
                    _string(body, "source", ""))


_PARSERS = {"bar": _bar, "news": _news}


def parse_message(data: bytes, attributes: Mapping[str, str] | None = None) -> Bar | NewsItem:
    """Turn a bus message into a :class:`Bar` or :class:`NewsItem`, or raise :class:`MalformedMessage`.

    Unknown fields are ignored (a newer producer may add some); missing ``source``, ``summary``, ``url``
    default to ``""`` and a missing news ``updated_at`` to ``created_at``.
    """
    try:
        body = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:   # a number of more than 4300 digits (Python's int conversion limit)
        raise MalformedMessage(f"not readable JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise MalformedMessage("JSON nested too deeply to read") from None
    except TypeError:
        raise MalformedMessage(f"data is {type(data).__name__}, not bytes") from None
    if not isinstance(body, dict):
        raise MalformedMessage(f"JSON is a {type(body).__name__}, not an object")
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in _PARSERS:
        raise MalformedMessage(f"unknown type {_short(kind)}; known: {', '.join(sorted(_PARSERS))}")
    attributes = attributes or {}
    if attributes.get("type", kind) != kind:
        raise MalformedMessage(f"attribute type={_short(attributes['type'])} but the body says {kind!r}")
    record = _PARSERS[kind](body)
    if kind == "bar" and attributes.get("symbol", record.symbol) != record.symbol:
        raise MalformedMessage(f"attribute symbol={_short(attributes['symbol'])} but the body says {_short(record.symbol)}")
    return record
