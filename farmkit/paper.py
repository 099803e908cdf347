"""Paper trading: the backtest's wiring with live feeds on a bus subscription.

Only the feeds (and so the clock) differ from ``fk.backtest``: the strategy, the recorder, the broker
model and the store are the same objects. FMEL (mode ``paper``) is written in batches by a writer
thread, so the strategy never waits on the store; what the store refuses is spilled to disk.
"""

from __future__ import annotations

import re
import threading
import time

import backtrader as bt
import numpy as np
import pandas as pd

from farmkit.brokers import open_broker
from farmkit.data.bars import Bars, to_bars
from farmkit.engine import (BrokerConfig, build_cerebro, check_params, code_hash, new_run_id, register_run,
                            run_cerebro)
from farmkit.feeds import LiveFeed
from farmkit.fmel.recorder import FmelRecorder, num2ns
from farmkit.fmel.stores import open_store
from farmkit.fmel.writer import BatchWriter
from farmkit.router import BarRouter
from farmkit.settings import Settings


class PaperSession:
    """A paper run being set up or running: its feeds, router, recorder and writer. ``stop()`` from
    any thread ends it cleanly (feeds end, FMEL is flushed)."""

    def __init__(self, run_id: str, feeds: dict[str, LiveFeed], router: BarRouter, recorder: FmelRecorder,
                 writer: BatchWriter):
        self.run_id, self.feeds, self.router, self.recorder, self.writer = run_id, feeds, router, recorder, writer
        self.cerebro: bt.Cerebro | None = None
        self.stopping = threading.Event()

    def stop(self) -> None:
        if not self.stopping.is_set():
            self.stopping.set()
            self.router.stop()
            if self.cerebro is not None:
                self.cerebro.runstop()   # do not wait for what is still queued


def _subscription_name(agent_id: str, symbols) -> str:
    name = re.sub(r"[^A-Za-z0-9\-_.]", "-", f"paper-{agent_id}-{'-'.join(symbols)}")
    return name[:200]


def consumed_bars(feeds: dict[str, bt.feed.DataBase]) -> Bars:
    """The bars each feed delivered, as :class:`Bars` (what a parity replay feeds to a backtest)."""
    out = Bars()
    for symbol, feed in feeds.items():
        n = len(feed.lines.datetime.array)
        stamps = num2ns(np.array(feed.lines.datetime.array[:n]))
        frame = pd.DataFrame({f: np.array(getattr(feed.lines, f).array[:n]) for f in
                              ("open", "high", "low", "close", "volume")},
                             index=pd.DatetimeIndex(stamps.view("datetime64[ns]"), name="timestamp").tz_localize("UTC"))
        out[symbol] = frame
    return out


def paper(strategy: type, symbols, *, bus=None, topic: str = "market-data", subscription: str | None = None,
          cash: float = 100_000.0, commission: float = 0.0, history=None, agent_id: str | None = None,
          settings: Settings | None = None, store=None, max_bars: int | None = None,
          duration: float | None = None, batch_bars: int = 500, flush_seconds: float = 1.0, qcheck: float = 0.5,
          broker_url: str | None = None, on_start=None, **params):
    """Paper-trade a strategy on live bars from the bus until stopped; returns a ``BacktestResult``
    of the session (mode ``paper``).

    ``history`` (``fk.data`` output for the same symbols) primes the indicators before going live.
    ``broker_url`` (default ``FARM_BROKER``) is ``sim://`` (fills as in the backtest) or ``alpaca-paper://``.
    The run ends after ``max_bars`` bars of the strategy, after ``duration`` seconds, when the bus
    feed ends, or when ``session.stop()`` is called (``on_start(session)`` receives the session).

    >>> res = fk.paper(SmaCross, ["AAPL"], bus="pubsub://my-project", history=bars, max_bars=390)
    """
    from farmkit.bus import BusBase, open_bus
    from farmkit.result import BacktestResult

    symbols = [symbols] if isinstance(symbols, str) else list(symbols)
    check_params(strategy, params)
    history = to_bars(history) if history is not None else Bars()
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store)
    own_bus = not isinstance(bus, BusBase)
    bus = open_bus(bus or settings.bus) if own_bus else bus
    agent_id = agent_id or strategy.__name__
    run_id = new_run_id("paper")
    broker = BrokerConfig(cash=float(cash), commission=float(commission))
    started = register_run(store, run_id, strategy=strategy, agent_id=agent_id, mode="paper", params=params,
                           data_fingerprint=None, code=code_hash(strategy))

    writer = BatchWriter(store.write_fmel, settings.home / "spill" / run_id)
    recorder = FmelRecorder(run_id, agent_id, mode="paper", sink=writer.put, batch_bars=batch_bars,
                            flush_seconds=flush_seconds)
    feeds = {s: LiveFeed(name=s, history=history.get(s), qcheck=qcheck,
                         timeframe=bt.TimeFrame.Minutes, compression=1) for s in symbols}
    router = BarRouter(feeds, on_event=recorder.note_event)
    session = PaperSession(run_id, feeds, router, recorder, writer)
    cerebro = build_cerebro(strategy, list(feeds.values()), broker, recorder, params,
                            broker_instance=open_broker(broker_url or settings.broker, broker, run_id=run_id))
    session.cerebro = cerebro

    subscription = subscription or _subscription_name(agent_id, symbols)
    bus.ensure_topic(topic)
    bus.ensure_subscription(subscription, topic, enable_message_ordering=True)
    handle = bus.subscribe(subscription, router.on_message)
    watcher = threading.Thread(target=_watch, args=(session, max_bars, duration), daemon=True)
    watcher.start()
    if on_start:
        on_start(session)

    def shut_down():
        session.stop()
        handle.close()
        writer.close()
        if own_bus:
            bus.close()

    run_cerebro(cerebro, recorder, store, run_id, strategy.__name__, started, on_stop=shut_down)
    recorder.flush()
    shut_down()
    bars = consumed_bars(feeds)
    result = BacktestResult.from_run(run_id=run_id, agent_id=agent_id, strategy=strategy, params=params,
                                     bars=bars, recorder=recorder, store=store, broker=broker)
    result.metrics["messages"] = dict(router.counts)
    store.runs.upsert(run_id, status="done", metrics=result.metrics, bars=recorder.bars,
                      data_fingerprint=bars.fingerprint(), finished_at=pd.Timestamp.now(tz="UTC"),
                      duration_s=time.time() - started)
    return result


def _watch(session: PaperSession, max_bars: int | None, duration: float | None) -> None:
    # Stops the session from outside the strategy thread: by bar count or by wall time.
    deadline = time.monotonic() + duration if duration else None
    while not session.stopping.wait(0.05):
        if max_bars is not None and session.recorder.bars >= max_bars:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
    session.stop()
