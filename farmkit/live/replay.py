"""A replayed market on the bus: bars published at a chosen speed, for demos and tests without keys.

``synthetic`` continues each symbol where its history ends (same session hours, the next trading
days, first open at the last close), so a paper run warmed up on the history goes on seamlessly;
a file (CSV or Parquet, as ``fk.data.load`` reads it) is replayed as it is. ``speed`` is a multiple of
real time: minute bars at ``speed=60`` come one per second. Gaps (nights, weekends) are not waited for.

    replay = Replay(load_replay("synthetic", ["AAPL", "MSFT"], bars), bus, speed=60).start()
    ...
    replay.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from farmkit.data.bars import Bars
from farmkit.errors import ConfigError
from farmkit.model import Bar

log = logging.getLogger(__name__)
SYNTHETIC_DAYS = 250        # how far a synthetic replay can run: a trading year of minute bars


def synthetic_continuation(history: Bars, symbols, *, days: int = SYNTHETIC_DAYS, seed: int = 11,
                           start: str = "2024-01-02", price: float = 100.0) -> Bars:
    """Synthetic minute bars that carry on after ``history``: for each symbol, trading days starting the
    weekday after its last bar, scaled so that the first open is its last close. Symbols without history
    start at ``start`` and ``price``."""
    from farmkit.data.synthetic import synthetic

    out = Bars()
    for symbol in symbols:
        frame = history.get(symbol)
        if frame is not None and len(frame):
            last = frame.index[-1].tz_convert("America/New_York")
            first_day = (last.normalize() + pd.offsets.BDay(1)).tz_localize(None)
            bars = synthetic(symbol, start=str(first_day.date()), days=days, seed=seed,
                             price=float(frame["close"].iloc[-1]))
        else:
            bars = synthetic(symbol, start=start, days=days, seed=seed, price=price)
        out[symbol] = bars[symbol]
    return out


def load_replay(spec: str, symbols, history: Bars | None = None) -> Bars:
    """The bars a replay spec names: ``synthetic`` or a path to a CSV or Parquet file of bars."""
    from farmkit.data.files import load

    history = history if history is not None else Bars()
    if spec == "synthetic":
        return synthetic_continuation(history, symbols)
    path = Path(spec.removeprefix("file:"))
    if not path.exists():
        raise ConfigError(f"replay source {spec!r} is neither 'synthetic' nor an existing file")
    bars = load(path) if len(symbols) != 1 else load(path, symbol=symbols[0])
    missing = [s for s in symbols if s not in bars]
    if missing:
        raise ConfigError(f"{path} has no bars for {', '.join(missing)} (it has {', '.join(bars) or 'none'})")
    return Bars({s: bars[s] for s in symbols})


def trim_history(history: Bars, replay: Bars) -> Bars:
    """History strictly before the first replayed bar of each symbol: a replayed bar that is not newer
    than the warm-up would be dropped as late."""
    out = Bars()
    for symbol, frame in history.items():
        first = replay[symbol].index[0] if symbol in replay and len(replay[symbol]) else None
        out[symbol] = frame if first is None else frame[frame.index < first]
    return out


class Replay:
    """Publishes ``bars`` on ``topic`` of ``bus`` in timestamp order (all symbols of a timestamp together),
    one bar interval of wall time divided by ``speed`` apart. ``finished`` is set when every bar has been
    published or the replay was stopped; ``published`` counts the bars sent."""

    def __init__(self, bars: Bars, bus, *, topic: str = "market-data", speed: float = 60.0,
                 interval: float | None = None, source: str = "replay"):
        if speed <= 0:
            raise ConfigError(f"replay speed must be > 0, got {speed}")
        self.bars, self.bus, self.topic, self.speed, self.source = bars, bus, topic, float(speed), source
        self.interval = interval if interval is not None else _interval(bars)
        self.published = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __len__(self) -> int:
        return sum(len(f) for f in self.bars.values())

    def start(self) -> "Replay":
        self.bus.ensure_topic(self.topic)
        self._thread = threading.Thread(target=self._run, name="farm-replay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _steps(self):
        # (timestamp ns, [(symbol, row)]) in time order, built lazily per step from numpy arrays.
        arrays = {s: (f.index.asi8, f[["open", "high", "low", "close", "volume"]].to_numpy(float))
                  for s, f in self.bars.items() if len(f)}
        stamps = np.unique(np.concatenate([a[0] for a in arrays.values()])) if arrays else np.array([], "int64")
        positions = {s: 0 for s in arrays}
        for stamp in stamps:
            step = []
            for symbol, (index, values) in arrays.items():
                i = positions[symbol]
                if i < len(index) and index[i] == stamp:
                    step.append((symbol, values[i]))
                    positions[symbol] = i + 1
            yield stamp, step

    def _run(self) -> None:
        from farmkit.bus import publish_record

        pause = self.interval / self.speed
        next_at = time.monotonic()
        try:
            for stamp, step in self._steps():
                if self._stop.wait(max(0.0, next_at - time.monotonic())):
                    break
                for symbol, (o, h, l, c, v) in step:
                    bar = Bar(symbol, pd.Timestamp(int(stamp), tz="UTC"), o, h, l, c, v, source=self.source)
                    publish_record(self.bus, self.topic, bar)
                    self.published += 1
                next_at += pause
            flush = getattr(self.bus, "flush", None)
            if flush is not None:
                flush()
        except BaseException as exc:  # noqa: BLE001 - reported to whoever watches the replay
            self.error = exc
            log.error("the replay stopped after %d bars: %s: %s", self.published, type(exc).__name__, exc)
        finally:
            self.finished.set()


def _interval(bars: Bars) -> float:
    # The typical spacing of consecutive bars, in seconds (60 for minute bars).
    gaps = [np.diff(f.index.asi8) for f in bars.values() if len(f) > 1]
    if not gaps:
        return 60.0
    return float(np.median(np.concatenate(gaps))) / 1e9
