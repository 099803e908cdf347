"""Seeded synthetic market data: minute bars in US trading hours, or daily bars.

Realistic enough to exercise a strategy and the tooling: a shared market factor, volatility that
clusters across days, a U-shaped intraday volatility and volume profile, overnight gaps, and OHLC
that is always consistent. Same arguments and seed, same bars, on any machine.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from farmkit.data import window as data_window
from farmkit.data.bars import COLUMNS, Bars

SESSION_MINUTES = 390                      # 09:30–16:00 America/New_York
_DAILY_VOL = 0.018                         # typical large-cap daily volatility
_OVERNIGHT_SHARE = 0.25                    # share of daily variance realised overnight


def _trading_days(start: str | pd.Timestamp, days: int) -> pd.DatetimeIndex:
    # Weekdays only; exchange holidays are not modelled (they are irrelevant for synthetic data).
    return pd.bdate_range(pd.Timestamp(start).tz_localize(None).normalize(), periods=days)


def _intraday_shape(minutes: int) -> np.ndarray:
    # U shape: busy open and close, quiet lunch. Normalised to mean 1.
    x = np.linspace(-1.0, 1.0, minutes)
    shape = 0.6 + 1.4 * x ** 2 + 0.5 * np.exp(-((x + 1.0) * 12) ** 2)
    return shape / shape.mean()


def _daily_vol_path(rng: np.random.Generator, days: int) -> np.ndarray:
    # Log-volatility AR(1): persistent regimes of calm and stress (volatility clustering).
    phi, sigma = 0.94, 0.22
    shocks = rng.standard_normal(days) * sigma
    logv = np.empty(days)
    level = 0.0
    for i in range(days):
        level = phi * level + shocks[i]
        logv[i] = level
    return _DAILY_VOL * np.exp(logv - logv.var() / 2)


def synthetic(symbols: str | list[str] = "AAPL", start: str = "2024-01-02", days: int = 20,
              freq: str = "1min", seed: int = 7, price: float | dict[str, float] = 100.0) -> Bars:
    """Synthetic OHLCV bars for one or more symbols.

    ``freq`` is ``"1min"`` (390 bars per weekday, 09:30–16:00 New York time, gaps overnight and at
    weekends) or ``"1D"`` (one bar per weekday, stamped at the 09:30 open). ``days`` counts trading days.

    >>> bars = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=20, freq="1min", seed=7)
    >>> bars["AAPL"].head()
    """
    if isinstance(symbols, str):
        symbols = [symbols]
    if not symbols:
        raise ValueError("synthetic() needs at least one symbol")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    per_day = {"1min": SESSION_MINUTES, "1d": 1}.get(str(freq).lower())
    if per_day is None:
        raise ValueError(f"freq must be '1min' or '1D', got {freq!r}")

    sessions = _trading_days(start, days)
    opens = (sessions + pd.Timedelta(hours=9, minutes=30)).tz_localize("America/New_York")
    open_ns = opens.tz_convert("UTC").as_unit("ns").asi8
    offsets_ns = np.arange(per_day, dtype="int64") * 60_000_000_000
    index = pd.DatetimeIndex((open_ns[:, None] + offsets_ns[None, :]).ravel().view("datetime64[ns]"),
                             name="timestamp").tz_localize("UTC")

    market_rng = np.random.default_rng([seed, 0])
    market_vol = _daily_vol_path(market_rng, days)
    market = _returns(market_rng, market_vol, per_day)
    bars = Bars()
    for symbol in symbols:
        rng = np.random.default_rng([seed, zlib.crc32(symbol.encode())])
        beta = rng.uniform(0.7, 1.3)
        idio = _returns(rng, _daily_vol_path(rng, days) * 0.8, per_day)
        start_price = price.get(symbol, 100.0) if isinstance(price, dict) else float(price)
        bars[symbol] = _ohlcv(rng, index, beta * market[0] + idio[0], beta * market[1] + idio[1],
                              start_price, per_day, days)
    return data_window.clip(bars)


def _returns(rng: np.random.Generator, daily_vol: np.ndarray, per_day: int) -> tuple[np.ndarray, np.ndarray]:
    """(overnight log-returns per day, intraday log-returns per bar as a days × per_day array)."""
    days = len(daily_vol)
    overnight = rng.standard_normal(days) * daily_vol * np.sqrt(_OVERNIGHT_SHARE)
    overnight[0] = 0.0
    bar_vol = daily_vol[:, None] * np.sqrt((1 - _OVERNIGHT_SHARE) / per_day) * np.sqrt(_intraday_shape(per_day))[None, :]
    # Student-t shocks (df=5, unit variance): fat tails like real returns.
    shocks = rng.standard_t(5, size=(days, per_day)) / np.sqrt(5 / 3)
    return overnight, shocks * bar_vol


def _ohlcv(rng, index, overnight, intraday, start_price, per_day, days) -> pd.DataFrame:
    gaps = np.zeros_like(intraday)
    gaps[:, 0] = overnight                           # the gap lands on the first bar of the day
    moves = (intraday + gaps).ravel()
    log_close = np.log(start_price) + np.cumsum(moves)
    close = np.exp(log_close)
    open_ = np.exp(log_close - moves + gaps.ravel())  # previous close, moved by the overnight gap
    bar_range = np.abs(intraday.ravel()) + np.abs(rng.normal(0, 0.0004 * np.sqrt(390 / per_day), close.size))
    high = np.maximum(open_, close) * np.exp(bar_range * rng.uniform(0.1, 0.6, close.size))
    low = np.minimum(open_, close) * np.exp(-bar_range * rng.uniform(0.1, 0.6, close.size))
    volume_shape = np.tile(_intraday_shape(per_day) ** 1.5, days)
    volume = np.round(rng.lognormal(np.log(2_000 * 390 / per_day), 0.5, close.size) * volume_shape)
    values = np.round(np.column_stack([open_, high, low, close]), 4)
    # Rounding can break ordering by a tick: restore the OHLC invariants exactly.
    values[:, 1] = values.max(axis=1)
    values[:, 2] = values[:, [0, 2, 3]].min(axis=1)
    return pd.DataFrame(np.column_stack([values, volume]), index=index, columns=list(COLUMNS))
