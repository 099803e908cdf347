"""Where a paper run's warm-up bars come from: the bars that prime the indicators before going live.

- ``notebook`` (default): the bars the notebook itself loaded (its last ``FARM_WARMUP_BARS``).
- ``alpaca``: the latest minute bars from Alpaca's historical REST API, up to now (keys as for
  ``fk.data.alpaca``; ``APCA_API_DATA_URL`` points at another server).
- ``archive``: the latest bars in the store's market archive (what ``farm archive`` keeps).

The same two sources fill the holes of a live run (``FARM_BACKFILL``, see :mod:`farmkit.live.backfill`).

    history = warmup_history("alpaca", ["AAPL", "MSFT"], 500)
"""

from __future__ import annotations

import math

import pandas as pd

from farmkit.data.bars import Bars
from farmkit.errors import ConfigError

SOURCES = ("notebook", "alpaca", "archive")
DEFAULT_BARS = 500          # when FARM_WARMUP_BARS does not say: more than most indicators need


def last_bars(bars: Bars, n: int | None) -> Bars:
    """The last ``n`` bars of each symbol (all of them when ``n`` is None)."""
    if n is None:
        return bars
    return Bars({symbol: frame.iloc[-n:] if n else frame.iloc[:0] for symbol, frame in bars.items()})


def warmup_history(source: str, symbols, n: int | None, notebook_bars: Bars | None = None, *,
                   now: pd.Timestamp | None = None, environ=None, home=None, store: str | None = None) -> Bars:
    """The warm-up bars of ``symbols`` from ``source`` (see the module docstring). ``archive`` reads
    the archive of the store URL ``store`` (e.g. FARM_STORE), else the embedded one under ``home``."""
    symbols = list(symbols)
    if source == "notebook":
        return last_bars(notebook_bars if notebook_bars is not None else Bars(), n)
    if source == "alpaca":
        from farmkit.data.alpaca_history import alpaca

        n = DEFAULT_BARS if n is None else n
        if n == 0:
            return Bars()
        now = now or pd.Timestamp.now(tz="UTC")
        # n minute bars of a 390-minute session, with room for weekends and holidays.
        days = 7 * math.ceil(n / 390 + 1) // 5 + 4
        bars = alpaca(symbols, start=now - pd.Timedelta(days=days), end=now, environ=environ)
        return last_bars(bars, n)
    if source == "archive":
        archive = open_market_archive(store, home, environ)
        bars = archive.latest_bars(symbols, DEFAULT_BARS if n is None else n, before=now)
        missing = [s for s in symbols if s not in bars]
        if missing:
            where = store or f"{archive.root}"
            raise ConfigError(f"the market archive ({where}) has no bars for {', '.join(missing)}; "
                              "run `farm archive` alongside the ingester first, or set FARM_WARMUP=notebook")
        return bars
    raise ConfigError(f"FARM_WARMUP must be one of {', '.join(SOURCES)}, got {source!r}")


def open_market_archive(store: str | None = None, home=None, environ=None):
    """The market archive of the store URL ``store`` (e.g. FARM_STORE), else the embedded one under
    ``home``: what warm-up and backfill (:mod:`farmkit.live.backfill`) read."""
    from farmkit.data.archive import LocalArchive, open_archive
    from farmkit.settings import Settings

    if store is not None:
        return open_archive(store)
    return LocalArchive(home if home is not None else Settings.from_env(environ).home)
