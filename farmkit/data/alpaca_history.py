"""Historical bars from Alpaca's market-data REST API (through alpaca-py), returned as validated `Bars`."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import SimpleNamespace

import pandas as pd

from farmkit.data import window as data_window
from farmkit.data.bars import Bars, validate_frame
from farmkit.errors import AlpacaAPIError, DataError, MissingCredentials

KEY_VARIABLE = "APCA_API_KEY_ID"
DATA_URL_VARIABLE = "APCA_API_DATA_URL"     # Alpaca's name for a market-data URL override
SECRET_VARIABLE = "APCA_API_SECRET_KEY"

_UNITS = {"min": "Minute", "minute": "Minute", "t": "Minute", "h": "Hour", "hour": "Hour",
          "d": "Day", "day": "Day", "w": "Week", "week": "Week", "mo": "Month", "month": "Month"}


def alpaca(symbols: str | Iterable[str], start, end=None, *, timeframe="1Min", feed: str = "iex",
           adjustment: str = "raw", environ: Mapping[str, str] | None = None,
           url_override: str | None = None) -> Bars:
    """Historical OHLCV bars from Alpaca.

    Stock symbols need ``APCA_API_KEY_ID`` and ``APCA_API_SECRET_KEY`` (free paper-account keys work,
    with ``feed="iex"``); crypto pairs such as ``"BTC/USD"`` need no keys. ``start``/``end`` are strings
    or datetimes, naive meaning UTC; ``end`` defaults to now. ``timeframe`` is ``"1Min"``, ``"5Min"``,
    ``"1Hour"``, ``"1Day"``, ... ``url_override`` (default ``APCA_API_DATA_URL``) points at another server.

    >>> bars = fk.data.alpaca(["AAPL", "MSFT"], start="2024-01-02", end="2024-01-06", timeframe="5Min")
    >>> btc = fk.data.alpaca("BTC/USD", start="2024-01-01", end="2024-01-02")
    """
    # Alpaca symbols are upper case ("BTC/USD" too); the Bars keys follow what Alpaca returns.
    symbols = list(dict.fromkeys(s.strip().upper() for s in ([symbols] if isinstance(symbols, str) else symbols)))
    if not symbols:
        raise ValueError("alpaca() needs at least one symbol, e.g. alpaca('AAPL', start='2024-01-02')")
    api = _alpaca_py()
    environ = os.environ if environ is None else environ
    key, secret = ((environ.get(name) or "").strip() or None for name in (KEY_VARIABLE, SECRET_VARIABLE))
    stocks = [s for s in symbols if "/" not in s]
    cryptos = [s for s in symbols if "/" in s]
    if stocks and not (key and secret):
        raise MissingCredentials(_missing_keys_message(stocks, key, secret))

    window = {"timeframe": _timeframe(timeframe, api), "start": _utc(start, "start"),
              "end": None if end is None else _utc(end, "end")}
    if window["end"] is not None and window["end"] <= window["start"]:
        raise ValueError(f"end ({window['end']}) must be after start ({window['start']})")
    url_override = url_override or (environ.get(DATA_URL_VARIABLE) or "").strip() or None
    base_url = url_override.rstrip("/") if url_override else None
    # raw_data=True: plain dicts per bar; alpaca-py's pydantic model per bar would cost more than the download.
    raw: dict[str, list] = {}
    if stocks:
        client = api.StockHistoricalDataClient(key, secret, raw_data=True, url_override=base_url)
        request = api.StockBarsRequest(symbol_or_symbols=stocks, feed=_choice(api.DataFeed, feed, "feed"),
                                       adjustment=_choice(api.Adjustment, adjustment, "adjustment"), **window)
        raw.update(_call(api, client.get_stock_bars, request, base_url))
    if cryptos:
        # Keys are optional for crypto; sending them when present raises Alpaca's rate limit.
        client = api.CryptoHistoricalDataClient(key if secret else None, secret if key else None,
                                                raw_data=True, url_override=base_url)
        request = api.CryptoBarsRequest(symbol_or_symbols=cryptos, **window)
        raw.update(_call(api, client.get_crypto_bars, request, base_url))

    empty = [s for s in symbols if not raw.get(s)]
    if empty:
        until = "now" if window["end"] is None else f"{window['end']:%Y-%m-%d %H:%M} UTC"
        raise DataError(f"Alpaca returned no bars for {', '.join(empty)} from {window['start']:%Y-%m-%d %H:%M} "
                        f"UTC to {until} (timeframe {window['timeframe']}"
                        f"{f', feed {feed}' if stocks else ''}); check the symbol and the dates "
                        "(stock markets are closed at weekends and on holidays)")
    return data_window.clip(Bars({s: _frame(raw[s], s) for s in symbols}))


def _missing_keys_message(stocks: list[str], key: str | None, secret: str | None) -> str:
    unset = [name for name, value in ((KEY_VARIABLE, key), (SECRET_VARIABLE, secret)) if not value]
    return (f"Alpaca stock bars ({', '.join(stocks)}) need API keys, and {' and '.join(unset)} "
            f"{'is' if len(unset) == 1 else 'are'} not set. Set {KEY_VARIABLE} and {SECRET_VARIABLE} "
            "to the keys of a free paper-trading account (sign up at https://alpaca.markets, then "
            "generate keys on the paper account's dashboard). Crypto pairs such as 'BTC/USD' need no keys, "
            "and fk.data.synthetic(...) gives realistic bars without any account.")


def _alpaca_py() -> SimpleNamespace:
    # Imported on use: alpaca-py is an optional extra, and the research core must import without it.
    try:
        import requests
        from alpaca.common.exceptions import APIError
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
        from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
        from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
    except ImportError:
        raise ImportError("fk.data.alpaca() needs alpaca-py: pip install 'thefarm[alpaca]'") from None
    return SimpleNamespace(
        APIError=APIError, RequestException=requests.exceptions.RequestException,
        Adjustment=Adjustment, DataFeed=DataFeed, TimeFrame=TimeFrame, TimeFrameUnit=TimeFrameUnit,
        StockHistoricalDataClient=StockHistoricalDataClient, StockBarsRequest=StockBarsRequest,
        CryptoHistoricalDataClient=CryptoHistoricalDataClient, CryptoBarsRequest=CryptoBarsRequest)


def _timeframe(value, api):
    if isinstance(value, api.TimeFrame):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]+)\s*", str(value))
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise ValueError(f"timeframe={value!r} is not understood; use e.g. '1Min', '5Min', '1Hour', '1Day', "
                         "'1Week' or '1Month'")
    try:
        return api.TimeFrame(int(match.group(1)), getattr(api.TimeFrameUnit, unit))
    except ValueError as exc:  # e.g. 90Min: Alpaca allows 1-59 minutes, 1-23 hours
        raise ValueError(f"timeframe={value!r}: {exc}") from None


def _utc(value, name: str) -> datetime:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a date or time; use e.g. '2024-01-02' or "
                         "'2024-01-02T09:30-05:00'") from None
    if pd.isna(stamp):
        raise ValueError(f"{name} is missing")
    stamp = stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def _choice(enum, value: str, name: str):
    try:
        return enum(str(value).lower())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(m.value for m in enum)}") from None


def _call(api, fetch, request, base_url: str | None) -> dict[str, list]:
    # alpaca-py follows next_page_token itself and merges the pages; errors come out as its own types.
    where = base_url or "https://data.alpaca.markets"
    try:
        return fetch(request) or {}
    except api.APIError as exc:
        raise _api_error(exc, where) from None
    except api.RequestException as exc:
        raise AlpacaAPIError(f"could not reach Alpaca at {where}: {exc}") from None


def _api_error(exc, where: str) -> AlpacaAPIError:
    status, text = exc.status_code, str(exc)
    try:
        body = json.loads(text)
        message = str(body.get("message", text)) if isinstance(body, dict) else text
    except ValueError:
        message = text
    hint = {
        401: f"the API keys were not accepted: check {KEY_VARIABLE} and {SECRET_VARIABLE}",
        403: f"the keys were refused ({KEY_VARIABLE}, {SECRET_VARIABLE}), or the plan does not include this "
             "data (free plans have feed='iex' only)",
        429: "too many requests (the free plan allows 200 a minute); wait a minute and retry",
    }.get(status, "check the symbols, dates, timeframe and feed")
    return AlpacaAPIError(f"Alpaca ({where}) answered HTTP {status}: {message.strip() or '(no message)'}; {hint}",
                          status=status, api_message=message)


def _frame(rows: list[dict], symbol: str) -> pd.DataFrame:
    raw = pd.DataFrame.from_records(rows, columns=["t", "o", "h", "l", "c", "v"])
    index = pd.DatetimeIndex(pd.to_datetime(raw["t"], utc=True, format="ISO8601"), name="timestamp")
    frame = pd.DataFrame({"open": raw["o"].to_numpy(), "high": raw["h"].to_numpy(), "low": raw["l"].to_numpy(),
                          "close": raw["c"].to_numpy(), "volume": raw["v"].to_numpy()}, index=index)
    return validate_frame(frame, source=f"Alpaca bars for {symbol}")
