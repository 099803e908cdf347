"""Bars without an Alpaca account, for demos and tests: ``synthetic`` (farmkit.data.synthetic) and
``replay:FILE`` (a CSV or Parquet of bars, farmkit.data.load), paced by ``speed``.

``speed`` is how many minutes of bars go out per minute of wall time (60: an hour of bars a minute;
0: as fast as the bus takes them). Bars of one timestamp go out together, as a live feed sends them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pandas as pd

from farmkit.data.bars import Bars
from farmkit.model import Bar


def load_bars(source: str, symbols: tuple[str, ...], days: int) -> Bars:
    from farmkit import data

    if source == "synthetic":
        return data.synthetic(list(symbols), start=str(pd.Timestamp.now(tz="UTC").date() - pd.offsets.BDay(days)),
                              days=days, freq="1min", seed=7)
    bars = data.load(source.split(":", 1)[1], tz="UTC")
    if symbols and "*" not in symbols:
        missing = [s for s in symbols if s not in bars]
        if missing:
            raise ValueError(f"{source}: no bars for {', '.join(missing)}; the file has {', '.join(bars)}")
        bars = Bars({s: bars[s] for s in symbols})
    return bars


def bursts(bars: Bars, source: str) -> Iterator[tuple[pd.Timestamp, list[Bar]]]:
    """(timestamp, the bars of every symbol at it), in time order."""
    frames = []
    for symbol, frame in bars.items():
        part = frame.reset_index()
        part.columns = ["timestamp", *part.columns[1:]]
        part["symbol"] = symbol
        frames.append(part)
    table = pd.concat(frames).sort_values(["timestamp", "symbol"], kind="stable")
    for stamp, group in table.groupby("timestamp", sort=True):
        yield stamp, [Bar(r.symbol, stamp, r.open, r.high, r.low, r.close, r.volume, source=source)
                      for r in group.itertuples(index=False)]


def replay(bars: Bars, source: str, speed: float, publish: Callable[[Bar], None], stop: threading.Event) -> int:
    """Publish every bar, paced by ``speed``; returns how many went out (fewer if ``stop`` was set)."""
    sent, start_wall, start_bar = 0, time.monotonic(), None
    for stamp, group in bursts(bars, source):
        if start_bar is None:
            start_bar = stamp
        if speed > 0:
            due = start_wall + (stamp - start_bar).total_seconds() / speed
            if stop.wait(max(0.0, due - time.monotonic())):
                return sent
        elif stop.is_set():
            return sent
        for bar in group:
            publish(bar)
            sent += 1
    return sent
