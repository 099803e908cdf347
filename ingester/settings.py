"""The ingester's settings: ``FARM_INGEST_*`` and Alpaca's ``APCA_*`` variables, read once into a frozen object.

Shared settings (``FARM_BUS``, ``FARM_HOME``, ``FARM_HEALTH_PORT``) come from :class:`farmkit.settings.Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from farmkit.errors import ConfigError
from farmkit.settings import Settings
from ingester.sharding import ordinal

PREFIX = "FARM_INGEST_"
CHANNELS = ("bars", "updated_bars", "daily_bars", "trades")

# variable -> (field, default, help). Defaults resolve here and nowhere else.
VARIABLES: dict[str, tuple[str, str, str]] = {
    "FARM_INGEST_SOURCE": ("source", "alpaca", "alpaca | synthetic | replay:FILE (CSV or Parquet of bars)"),
    "FARM_INGEST_STOCKS": ("stocks", "", "stock symbols, comma-separated, or * for every symbol"),
    "FARM_INGEST_CRYPTO": ("crypto", "", "crypto pairs, comma-separated (BTC/USD,ETH/USD), or *"),
    "FARM_INGEST_FEED": ("feed", "iex", "stock feed: iex (free plan) or sip (paid plan)"),
    "FARM_INGEST_NEWS": ("news", "off", "poll news for the stock symbols: on | off | SYMBOLS | *"),
    "FARM_INGEST_CHANNELS": ("channels", "bars,updated_bars", f"stream channels: {', '.join(CHANNELS)}"),
    "FARM_INGEST_MARKET_TOPIC": ("market_topic", "market-data", "topic for minute bars"),
    "FARM_INGEST_NEWS_TOPIC": ("news_topic", "news-data", "topic for news"),
    "FARM_INGEST_DAILY_TOPIC": ("daily_topic", "market-data-daily", "topic for daily bars"),
    "FARM_INGEST_TRADES_TOPIC": ("trades_topic", "market-trades", "topic for trades"),
    "FARM_INGEST_POLL_SECONDS": ("poll_seconds", "10", "seconds between news polls"),
    "FARM_INGEST_REST_PER_MINUTE": ("rest_per_minute", "150", "REST requests a minute (free plan: 200)"),
    "FARM_INGEST_WATCHDOG_SECONDS": ("watchdog_seconds", "120",
                                     "reconnect when the market is open and nothing arrived for this long"),
    "FARM_INGEST_BACKFILL": ("backfill", "on", "fill gaps after reconnects through the REST API: on | off"),
    "FARM_INGEST_BACKFILL_WAIT_SECONDS": ("backfill_wait_seconds", "90",
                                          "after a reconnect, how long to wait for a symbol's next live bar "
                                          "before backfilling up to now"),
    "FARM_INGEST_RESTART_BACKFILL_HOURS": ("restart_backfill_hours", "24",
                                           "after a restart, backfill from each symbol's last published bar "
                                           "if it is at most this old (0: never)"),
    "FARM_INGEST_SHARD_INDEX": ("shard_index", "", "this replica's index (default: the ordinal in HOSTNAME)"),
    "FARM_INGEST_SHARD_COUNT": ("shard_count", "1", "number of replicas"),
    "FARM_INGEST_SHARD_BY": ("shard_by", "feed",
                             "feed (one account: each feed on one replica) | symbol (an account per replica)"),
    "FARM_INGEST_STREAM_URL": ("stream_url", "", "base WebSocket URL (default wss://stream.data.alpaca.markets)"),
    "FARM_INGEST_DATA_URL": ("data_url", "", "base REST data URL (default https://data.alpaca.markets)"),
    "FARM_INGEST_TRADING_URL": ("trading_url", "", "base trading URL for /v2/clock (default: paper API)"),
    "FARM_INGEST_SPEED": ("speed", "60", "synthetic/replay: minutes of bars per minute x this (0: no pacing)"),
    "FARM_INGEST_DAYS": ("days", "1", "synthetic: trading days of bars"),
}


def _split(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip().upper() for s in text.split(",") if s.strip()))


@dataclass(frozen=True)
class IngestSettings:
    """What the ingester reads, where it publishes, how it stays alive.

    >>> IngestSettings.from_env({"FARM_INGEST_STOCKS": "AAPL,MSFT", "APCA_API_KEY_ID": "k",
    ...                          "APCA_API_SECRET_KEY": "s"}).stocks
    ('AAPL', 'MSFT')
    """

    farm: Settings
    source: str = "alpaca"
    stocks: tuple[str, ...] = ()
    crypto: tuple[str, ...] = ()
    feed: str = "iex"
    news: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("bars", "updated_bars")
    market_topic: str = "market-data"
    news_topic: str = "news-data"
    daily_topic: str = "market-data-daily"
    trades_topic: str = "market-trades"
    poll_seconds: float = 10.0
    rest_per_minute: int = 150
    watchdog_seconds: float = 120.0
    backfill: bool = True
    backfill_wait_seconds: float = 90.0
    restart_backfill_hours: float = 24.0
    shard_index: int = 0
    shard_count: int = 1
    shard_by: str = "feed"
    stream_url: str = ""
    data_url: str = ""
    trading_url: str = ""
    speed: float = 60.0
    days: int = 1
    key_id: str = ""
    secret_key: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "IngestSettings":
        environ = dict(os.environ if environ is None else environ)
        unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in VARIABLES)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(VARIABLES))}")
        # The shared settings reject FARM_* keys they do not know, the ingester's among them.
        farm = Settings.from_env({k: v for k, v in environ.items() if not k.startswith(PREFIX)})
        raw = {name: (environ.get(var) or "").strip() or default for var, (name, default, _) in VARIABLES.items()}
        values: dict = {"farm": farm}
        source = raw["source"]
        if not (source in ("alpaca", "synthetic") or source.startswith("replay:")):
            raise ConfigError(f"FARM_INGEST_SOURCE must be alpaca, synthetic or replay:FILE, got {source!r}")
        if source.startswith("replay:") and not Path(source[7:]).expanduser().is_file():
            raise ConfigError(f"FARM_INGEST_SOURCE={source}: no such file {source[7:]!r} (a CSV or Parquet of bars)")
        values["source"] = source
        values["stocks"], values["crypto"] = _split(raw["stocks"]), _split(raw["crypto"])
        for name in ("stocks", "crypto"):
            if "*" in values[name] and len(values[name]) > 1:
                raise ConfigError(f"FARM_INGEST_{name.upper()} is * together with symbols; use * alone")
        if source == "alpaca" and not (values["stocks"] or values["crypto"] or raw["news"] not in ("off", "")):
            raise ConfigError("nothing to ingest: set FARM_INGEST_STOCKS (e.g. AAPL,MSFT or *), FARM_INGEST_CRYPTO "
                              "(e.g. BTC/USD) or FARM_INGEST_NEWS=on; or run a demo with --source synthetic")
        if source == "synthetic" and not values["stocks"]:
            values["stocks"] = ("AAPL", "MSFT")
        feed = raw["feed"].lower()
        if feed not in ("iex", "sip"):
            raise ConfigError(f"FARM_INGEST_FEED must be iex or sip, got {raw['feed']!r}")
        values["feed"] = feed
        news = raw["news"].lower()
        values["news"] = (() if news == "off" else values["stocks"] or ("*",) if news == "on"
                          else _split(raw["news"]))
        channels = tuple(c.strip().lower() for c in raw["channels"].split(",") if c.strip())
        bad = [c for c in channels if c not in CHANNELS]
        if bad or "bars" not in channels:
            raise ConfigError(f"FARM_INGEST_CHANNELS={raw['channels']!r}: choose among {', '.join(CHANNELS)} "
                              "(bars is required)")
        values["channels"] = channels
        for name in ("market_topic", "news_topic", "daily_topic", "trades_topic", "stream_url", "data_url",
                     "trading_url", "shard_by"):
            values[name] = raw[name]
        for name, kind, least in (("poll_seconds", float, 0.01), ("rest_per_minute", int, 1),
                                  ("watchdog_seconds", float, 0.1), ("backfill_wait_seconds", float, 0.0),
                                  ("restart_backfill_hours", float, 0.0),
                                  ("shard_count", int, 1), ("speed", float, 0.0), ("days", int, 1)):
            values[name] = _number(name, raw[name], kind, least)
        if raw["backfill"].lower() not in ("on", "off"):
            raise ConfigError(f"FARM_INGEST_BACKFILL must be on or off, got {raw['backfill']!r}")
        values["backfill"] = raw["backfill"].lower() == "on"
        if values["shard_by"] not in ("feed", "symbol"):
            raise ConfigError(f"FARM_INGEST_SHARD_BY must be feed or symbol, got {values['shard_by']!r}")
        if raw["shard_index"]:
            values["shard_index"] = _number("shard_index", raw["shard_index"], int, 0)
        else:
            found = ordinal(environ.get("HOSTNAME"))
            values["shard_index"] = found if found is not None and values["shard_count"] > 1 else 0
        if values["shard_index"] >= values["shard_count"]:
            raise ConfigError(f"shard index {values['shard_index']} (FARM_INGEST_SHARD_INDEX or the HOSTNAME "
                              f"ordinal) must be below FARM_INGEST_SHARD_COUNT={values['shard_count']}")
        values["key_id"] = (environ.get("APCA_API_KEY_ID") or "").strip()
        values["secret_key"] = (environ.get("APCA_API_SECRET_KEY") or "").strip()
        needs_keys = source == "alpaca" and (values["stocks"] or values["news"])
        if needs_keys and not (values["key_id"] and values["secret_key"]):
            unset = [v for v, f in (("APCA_API_KEY_ID", "key_id"), ("APCA_API_SECRET_KEY", "secret_key"))
                     if not values[f]]
            raise ConfigError(f"the Alpaca stock and news feeds need API keys; {' and '.join(unset)} not set. Use the "
                              "keys of a free paper account (https://alpaca.markets), or try --source synthetic")
        return cls(**values)

    def replace(self, **changes) -> "IngestSettings":
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ConfigError(f"unknown setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def _number(name: str, text: str, kind, least):
    var = PREFIX + name.upper()
    try:
        value = kind(text)
        if value < least:
            raise ValueError
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{var} must be {what} >= {least}, got {text!r}") from None
    return value
