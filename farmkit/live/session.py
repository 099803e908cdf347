"""Paper trading: the backtest's wiring with live feeds on a bus subscription.

Only the feeds (and so the clock) differ from ``fk.backtest``: the strategy, the recorder, the broker
model and the store are the same objects. FMEL (mode ``paper``) is written in batches by a writer
thread, so the strategy never waits on the store; what the store refuses is spilled to disk.

With a ``state_dir`` the run survives restarts: a checkpoint is saved after every committed FMEL
batch, each bar accepted from the bus is journaled before its message is acked (see
:mod:`farmkit.live.inbox`), a status file tells the runner how the run is doing, and a ``stop`` file asks
it to stop cleanly. Started again with the same ``state_dir``, it resumes: same run id, bar numbers
continuing after the last committed batch, account restored, nothing recorded or ordered twice.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd

from farmkit.live import checkpoint as _checkpoint
from farmkit import leaderboard
from farmkit.brokers import open_broker
from farmkit.live.checkpoint import Checkpoint, CheckpointError
from farmkit.data.bars import Bars, to_bars
from farmkit.errors import ShadowedParameter
from farmkit.brokers.config import BrokerConfig
from farmkit.kernel import Run, bar_size, check_params, check_strategy, merge_params, new_run_id
from farmkit.feeds import LiveFeed, ack_taken
from farmkit.fmel.recorder import Assembler, FmelRecorder, num2ns
from farmkit.fmel.stores import open_store
from farmkit.fmel.writer import BatchWriter
from farmkit.live.drift import DriftHook, DriftMonitor, monitor_for
from farmkit.live.inbox import Inbox
from farmkit.live.resume import SessionHook, Snapshots, checkpoint_of, tail_frames
from farmkit.live.backfill import Backfill, open_source
from farmkit.live.router import BarRouter
from farmkit.live.staleness import StaleMarks, Staleness, default_stale_after
from farmkit.settings import Settings

log = logging.getLogger(__name__)



class PaperSession:
    """A paper run being set up or running: its feeds, router, recorder and writer. ``stop()`` from
    any thread ends it cleanly (feeds end, FMEL is flushed)."""

    def __init__(self, run_id: str, feeds: dict[str, LiveFeed], router: BarRouter, recorder: FmelRecorder,
                 writer: BatchWriter, *, agent_id: str = "", state_dir: Path | None = None):
        self.run_id, self.feeds, self.router, self.recorder, self.writer = run_id, feeds, router, recorder, writer
        self.agent_id, self.state_dir = agent_id, state_dir
        self.cerebro: bt.Cerebro | None = None
        self.hook: SessionHook | None = None
        self.stopping = threading.Event()
        self.committed = recorder.first_bar      # bar_number up to which FMEL is committed
        self.last_bar_at = None                  # wall time the last bar was accepted from the bus
        self._last_bar = None                    # the last bar accepted (its timestamp is formatted on demand)
        self.state = "starting"
        self.handle = None                       # the bus subscription; replaced when it is made again
        self.resubscribe = None
        self.replay = None                       # a farmkit.live.replay.Replay publishing on the run's bus
        self.staleness: Staleness | None = None  # per-symbol bar ages, and the decisions taken on stale bars
        self.drift: DriftMonitor | None = None   # the drift alarms against the backtest baseline
        self.warmup_bars = 0                     # bars of history this process steps through before live ones

    @property
    def last_bar_timestamp(self) -> str | None:
        """Timestamp (ISO) of the last bar accepted from the bus."""
        bar = self._last_bar
        return None if bar is None else bar.timestamp.isoformat()

    def stop(self) -> None:
        if not self.stopping.is_set():
            self.stopping.set()
            self.router.stop()
            if self.cerebro is not None:
                self.cerebro.runstop()   # do not wait for what is still queued

    def status(self) -> dict:
        """What the runner's /metrics and /readyz report (written to ``state_dir/status.json``)."""
        recorder, hook = self.recorder, self.hook
        warming = any(f._history for f in self.feeds.values()) or recorder.replaying
        state = self.state if self.state in ("stopping", "stopped", "starting") else ("warming" if warming else "live")
        return {
            "run_id": self.run_id, "agent_id": self.agent_id, "pid": os.getpid(), "state": state,
            "bars_received": int(self.router.counts.get("routed", 0)),
            "bars_backfilled": int(self.router.backfilled),
            "messages": dict(self.router.counts),
            "bars_processed": recorder.bars, "next_bar_number": recorder.first_bar + recorder.bars,
            "warmup_bars": self.warmup_bars, "live_bars_processed": max(0, recorder.bars - self.warmup_bars),
            "fmel_committed": self.committed,
            "fmel_backlog": recorder.first_bar + recorder.bars - self.committed,
            "fmel_spilled_batches": self.writer.pending, "fmel_sink_failures": self.writer.failures,
            "orders": hook.orders if hook is not None and hasattr(hook, "orders") else 0,
            "decision_lag_seconds": _finite(getattr(hook, "decision_lag", None)),
            "last_bar_at": self.last_bar_at, "last_bar_timestamp": self.last_bar_timestamp,
            **self.health(), "updated_at": time.time(),
        }

    def health(self) -> dict:
        """Staleness (``stale_after``, ``symbols``, ``stale_symbols``, ``stale_decisions``) and ``drift``:
        what /readyz, /metrics and the leaderboard row report of the data and of the trading."""
        out = {}
        if self.staleness is not None:
            out.update(self.staleness.report(), stale_decisions=self.staleness.marked)
        out["drift"] = self.drift.state() if self.drift is not None else None
        return out

    def health_metrics(self) -> dict:
        """The run metrics of :meth:`health`: ``stale_decisions``, and ``drift`` with its alarms when watched."""
        out = {"stale_decisions": self.staleness.marked if self.staleness is not None else 0}
        if self.drift is not None:
            out.update(drift=self.drift.drifting, drift_alarms=[a.describe() for a in self.drift.alarms])
        return out

    def write_status(self) -> None:
        if self.state_dir is not None:
            try:
                _checkpoint.write_json(self.state_dir / _checkpoint.STATUS, self.status())
            except OSError as exc:   # a full or read-only volume must not stop the trading loop
                log.warning("could not write the status file: %s", exc)


class _Journaled:
    """A feed as the router sees it: a bar is journaled (and its arrival noted) before it is queued,
    and the router acks the message only after ``put`` returns."""

    takes_ack = True

    def __init__(self, feed: LiveFeed, inbox: Inbox | None, session_ref: list, arrivals: deque,
                 staleness: Staleness | None = None):
        self.feed, self.inbox, self._session, self.arrivals = feed, inbox, session_ref, arrivals
        self.staleness = staleness
        self.journal = True

    def put(self, bar, ack=None) -> None:
        if self.inbox is not None and self.journal:
            self.inbox.append(bar)
        now = time.time()
        self.arrivals.append((bar.timestamp.value, now))
        if self.staleness is not None:
            self.staleness.arrived(bar.symbol, now)
        session = self._session[0]
        session.last_bar_at, session._last_bar = now, bar
        self.feed.put(bar, ack)

    def stop_feed(self) -> None:
        self.feed.stop_feed()


def _finite(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


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


def _with_tail(history: Bars, resume: Checkpoint, symbols) -> Bars:
    # The bars the strategy saw up to the checkpoint come after (and win over) the notebook's history,
    # so a restart primes its indicators on what the run had really seen.
    tails = tail_frames(resume)
    out = Bars()
    for symbol in symbols:
        parts = [f for f in (history.get(symbol), tails.get(symbol)) if f is not None and len(f)]
        if not parts:
            continue
        frame = pd.concat(parts)
        out[symbol] = frame[~frame.index.duplicated(keep="last")].sort_index()
    return out


def paper(strategy: type, symbols, *, bus=None, topic: str = "market-data", subscription: str | None = None,
          cash: float | None = None, commission: float | None = None, broker: BrokerConfig | None = None,
          params: Mapping | None = None, timeframe: tuple[int, int] | None = None,
          history=None, agent_id: str | None = None,
          settings: Settings | None = None, store=None, max_bars: int | None = None,
          duration: float | None = None, batch_bars: int = 500, flush_seconds: float = 1.0, qcheck: float = 0.5,
          broker_url: str | None = None, on_start=None, state_dir=None, resume: Checkpoint | None = None,
          tail_bars: int = 500, status_every: float = 1.0, replay: str | None = None,
          replay_speed: float | None = None, stale_after: float | None = None, calendars=None,
          drift_baseline=None, live_bars: int | None = None, **kwargs):
    """Paper-trade a strategy on live bars from the bus until stopped; returns a ``BacktestResult``
    of the session (mode ``paper``).

    ``history`` (``fk.data`` output for the same symbols) primes the indicators before going live.
    The strategy's parameters are ``params={...}`` and/or extra keyword arguments (a parameter named
    like one of this function's options goes in ``params``). ``broker`` is the broker model (a
    :class:`~farmkit.brokers.BrokerConfig`, as a backtest's: slippage, cheat-on-close/open, sizer);
    ``cash`` and ``commission`` are shortcuts for ``BrokerConfig(cash=..., commission=...)``.
    ``timeframe`` is backtrader's ``(timeframe, compression)`` of the bars; by default the bar size
    of ``history``, or 1-minute bars without history.
    ``broker_url`` (default ``FARM_BROKER``) is ``sim://`` (fills as in the backtest) or ``alpaca-paper://``.
    The run ends after ``max_bars`` bars of the strategy (warm-up included, checked from another
    thread), after exactly ``live_bars`` bars past the warm-up (default ``FARM_PAPER_BARS``; counted on the
    strategy's thread, so not one more is processed), after ``duration`` seconds, when the bus feed ends, or when ``session.stop()`` is called (``on_start(session)`` receives the session).
    ``state_dir`` keeps checkpoints, the inbox journal and the status file; a checkpoint found there
    (or passed as ``resume``) is resumed. ``tail_bars`` bars per symbol go into each checkpoint.
    ``replay`` (default ``FARM_REPLAY``: ``"synthetic"`` or a file of bars) publishes a replayed market
    on the run's own bus at ``replay_speed`` times real time (see :mod:`farmkit.live.replay`); a file's
    replay ends the run when all its bars are processed.
    ``stale_after`` (default ``FARM_STALE_AFTER``, else three bar sizes) is how many seconds without a
    bar make a symbol stale while its market is open (``calendars``: symbol -> market hours, see
    :mod:`farmkit.live.staleness`); decisions taken then are marked in FMEL and counted.
    ``drift_baseline`` (default ``FARM_DRIFT_BASELINE``) is the backtest run id (or a
    :class:`~farmkit.live.drift.Baseline`) the run's fills are compared with as they arrive: a drifting
    run is flagged in FMEL, its status and its leaderboard row (see :mod:`farmkit.live.drift`).

    >>> res = fk.paper(SmaCross, ["AAPL"], bus="pubsub://my-project", history=bars, max_bars=390)
    """
    from farmkit.bus import BusBase, open_bus

    symbols = [symbols] if isinstance(symbols, str) else list(symbols)
    check_strategy(strategy)
    given = {"bus": bus, "topic": topic != "market-data", "subscription": subscription, "cash": cash is not None,
             "commission": commission is not None, "broker": broker, "timeframe": timeframe,
             "history": history is not None, "agent_id": agent_id, "settings": settings, "store": store,
             "max_bars": max_bars is not None, "duration": duration is not None, "state_dir": state_dir,
             "resume": resume is not None, "replay": replay, "replay_speed": replay_speed,
             "stale_after": stale_after is not None, "calendars": calendars, "drift_baseline": drift_baseline,
             "live_bars": live_bars is not None}
    params = check_params(strategy, merge_params(strategy, params, kwargs, {k: bool(v) for k, v in given.items()}))
    if broker is None:
        broker = BrokerConfig(cash=100_000.0 if cash is None else cash, commission=commission or 0.0)
    elif cash is not None or commission is not None:
        raise ValueError("give the broker model either as broker=BrokerConfig(...) or as cash=/commission=, not both")
    history = to_bars(history) if history is not None else Bars()
    if timeframe is None:
        timeframe = bar_size(next(iter(history.values()))) if history else (bt.TimeFrame.Minutes, 1)
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store)
    agent_id = agent_id or strategy.__name__
    state_dir = Path(state_dir) if state_dir is not None else None
    if resume is None and state_dir is not None:
        resume = _checkpoint.load(state_dir)
    if resume is not None and resume.agent_id != agent_id:
        raise CheckpointError(f"{state_dir or 'the checkpoint'} holds a checkpoint of agent {resume.agent_id!r}, "
                              f"not {agent_id!r}; give this agent its own state directory")
    if state_dir is not None:
        _checkpoint.clear_stop(state_dir)    # a stop asked of the previous process is not for this one
    own_bus = not isinstance(bus, BusBase)
    bus = open_bus(bus or settings.bus) if own_bus else bus
    run_id = resume.run_id if resume else new_run_id("paper")
    kernel = Run(strategy, params, mode="paper", broker=broker, settings=settings, store=store, agent_id=agent_id,
                 run_id=run_id)
    kernel.register(data_fingerprint=None)
    replay = replay if replay is not None else settings.replay
    replay_bars = None
    if replay:
        from farmkit.live.replay import load_replay, trim_history
        replay_bars = load_replay(replay, symbols, history)
        history = trim_history(history, replay_bars)
    if resume is not None:
        history = _with_tail(history, resume, symbols)
    elif state_dir is not None:
        # The run id is kept from the start: a kill before the first commit still resumes this run
        # (its inbox holds the bars already acked).
        _checkpoint.save(Checkpoint(run_id=run_id, agent_id=agent_id, bars_written=0), state_dir)

    # The strategy thread only gathers each batch's numbers; the writer thread makes the rows.
    recorder = kernel.record(sink=None, batch_bars=batch_bars, flush_seconds=flush_seconds,
                             first_bar=resume.bars_written if resume else 0, defer_assembly=True)
    if resume is not None:
        recorder.resume(positions={s: p[0] for s, p in resume.positions.items()}, start_value=resume.start_value,
                        peak=resume.peak)
    feeds = {s: LiveFeed(name=s, history=history.get(s), qcheck=qcheck,
                         timeframe=timeframe[0], compression=timeframe[1]) for s in symbols}
    acks: list = []
    for feed in feeds.values():
        feed.share_acks(acks, after_next=True)
    inbox = Inbox(state_dir / "inbox.jsonl") if state_dir is not None else None
    session_ref: list = []
    arrivals = {s: deque() for s in symbols}
    staleness = Staleness(symbols, stale_after or settings.stale_after or default_stale_after(*timeframe),
                          calendars=calendars)
    monitor = monitor_for(drift_baseline, settings.drift_baseline, store)
    journaled = {s: _Journaled(f, inbox, session_ref, arrivals[s], staleness) for s, f in feeds.items()}
    after = {s: pd.Timestamp(t, tz="UTC") for s, t in resume.last.items()} if resume else None
    grid = {bt.TimeFrame.Seconds: 1, bt.TimeFrame.Minutes: 60}.get(timeframe[0])
    on_decided = partial(ack_taken, acks)
    live_bars = live_bars if live_bars is not None else settings.paper_bars
    warmup_steps = _warmup_steps(history, symbols)
    if live_bars is not None:
        on_decided = _stop_after(live_bars + warmup_steps, recorder, session_ref, on_decided)
    # Holes in minute bars are filled from FARM_BACKFILL (see farmkit.live.backfill), or recorded.
    backfill = Backfill(open_source(settings.backfill, store=settings.store, home=settings.home),
                        calendars=staleness.calendars, wait=staleness.stale_after) \
        if tuple(timeframe) == (bt.TimeFrame.Minutes, 1) else None
    router = BarRouter(journaled, on_event=recorder.note_event, after=after, bar_seconds=grid,
                       max_future=settings.max_future, backfill=backfill)
    broker_instance = open_broker(broker_url or settings.broker, broker, run_id=run_id)
    if hasattr(broker_instance, "restore_orders"):
        # Alpaca keeps the run's orders: the broker reconciles with them from the checkpoint on when it starts
        # (ids carry on the count, so a bar decided again adopts its order), and notes in FMEL what it refuses.
        broker_instance.resume(resume)
        broker_instance.on_event = recorder.note_event
    cerebro = kernel.build(list(feeds.values()), broker_instance=broker_instance,
                           hooks=[(SessionHook, dict(_name="farm_session", recorder=recorder, resume=resume,
                                                      arrivals=arrivals, on_decided=on_decided,
                                                      on_start=_set_hook(session_ref))),
                                  (StaleMarks, dict(_name="farm_stale", staleness=staleness, recorder=recorder,
                                                    live=lambda: not any(f._history for f in feeds.values()))),
                                  *([(DriftHook, dict(_name="farm_drift", monitor=monitor, recorder=recorder))]
                                    if monitor is not None else [])])
    session = PaperSession(run_id, feeds, router, recorder, writer=None, agent_id=agent_id, state_dir=state_dir)
    session.staleness, session.drift, session.warmup_bars = staleness, monitor, warmup_steps
    session_ref.append(session)
    session.cerebro = cerebro

    snapshots = Snapshots(recorder, broker_instance, run_id=run_id, agent_id=agent_id, tail_bars=tail_bars,
                          resume=resume) if state_dir is not None else None
    commit = _Committer(store, session, state_dir, inbox)
    assembler = Assembler()
    writer = BatchWriter(commit, settings.home / "spill" / run_id, prepare=assembler)
    session.writer = writer
    recorder.sink = (lambda table: writer.put(snapshots.annotate(table))) if snapshots else writer.put

    if inbox is not None and resume is not None:
        # Bars accepted (and acked) before the restart but not in the checkpoint: first in line.
        for bar in inbox.read():
            for feed in journaled.values():
                feed.journal = False
            router.route(bar.to_wire(), bar.attributes())
        for feed in journaled.values():
            feed.journal = True

    subscription = subscription or _subscription_name(agent_id, symbols)
    bus.ensure_topic(topic)
    bus.ensure_subscription(subscription, topic, enable_message_ordering=True)
    session.handle = bus.subscribe(subscription, router.on_message)
    if backfill is not None:
        backfill.watch(router)       # the tails of symbols Pub/Sub has gone silent on

    def resubscribe():
        # The stream ended for good (e.g. the subscription is gone after a Pub/Sub restart): strategies
        # see CONNBROKEN, and the subscription is made again; the feeds go LIVE with the next bar.
        for feed in feeds.values():
            feed.broken()
        recorder.note_event(None, "stream_broken", f"subscription {subscription}: {session.handle.exception()!r}")
        bus.ensure_topic(topic)
        bus.ensure_subscription(subscription, topic, enable_message_ordering=True)
        session.handle = bus.subscribe(subscription, router.on_message)
        recorder.note_event(None, "resubscribed", f"subscription {subscription}")

    session.resubscribe = resubscribe
    session.state = "running"
    # The paper board shows the run while it runs; its final figures replace these at the end.
    updates = leaderboard.LiveUpdates(settings, store.runs.get(run_id) or {"run_id": run_id, "agent_id": agent_id,
                                      "mode": "paper"}, recorder, every=settings.leaderboard_every,
                                      extra=session.health_metrics).start()
    if replay_bars is not None:
        from farmkit.live.replay import Replay
        session.replay = Replay(replay_bars, bus, topic=topic, speed=replay_speed or settings.replay_speed,
                                source="synthetic" if replay == "synthetic" else "replay").start()
        log.info("replaying %d bars of %s at %gx real time on %s", len(session.replay), replay,
                 session.replay.speed, topic)
    watcher = threading.Thread(target=_watch, args=(session, max_bars, duration, status_every), daemon=True)
    watcher.start()
    threading.Thread(target=_heartbeats, args=(store, run_id, session.stopping), daemon=True,
                     name="farm-heartbeat").start()
    if on_start:
        on_start(session)

    def shut_down():
        session.state = "stopping"
        session.stop()
        for feed in feeds.values():
            feed.release_acks()   # every bar queued so far is acked, as if acked when queued
        updates.stop()
        if backfill is not None:
            backfill.close()
        if session.replay is not None:
            session.replay.stop()
        session.handle.close()
        writer.close()
        assembler.close()
        recorder.close()
        pending = store.close() if hasattr(store, "close") else None   # a cloud store writes what it spilled
        if pending and pending.get("records"):
            log.error("%d FMEL record(s) of run %s are still spilled under %s (%s); they are written the next "
                      "time this store writes", pending["records"], run_id, getattr(store, "spill_dir", "?"),
                      pending.get("last_error"))
        if own_bus:
            bus.close()
        if inbox is not None:
            inbox.close()
        session.state = "stopped"
        session.write_status()

    kernel.execute(on_stop=shut_down)
    recorder.flush()
    shut_down()
    bars = consumed_bars(feeds)
    return kernel.finish(bars, extra_metrics={"messages": dict(router.counts), **session.health_metrics()},
                         data_fingerprint=bars.fingerprint())



def paper_from_plan(plan):
    """A notebook's ``fk.backtest`` call in a paper pod (``FARM_MODE=paper``): the same strategy,
    parameters and broker model on live bars; the notebook's bars (or the warm-up the settings name)
    prime the indicators, and give the bar size."""
    from farmkit.live.warmup import warmup_history

    settings, bars = plan.settings, plan.bars
    history = warmup_history(settings.warmup, list(bars), settings.warmup_bars, bars, home=settings.home,
                             store=settings.store)
    with warnings.catch_warnings():
        # The plan's parameters are the strategy's whole set: no option here is meant for the strategy.
        warnings.simplefilter("ignore", ShadowedParameter)
        return paper(plan.strategy, list(bars), history=history, bus=settings.bus,
                     subscription=settings.subscription, agent_id=plan.agent_id or settings.agent_id,
                     broker=plan.broker, params=plan.params, timeframe=bar_size(next(iter(bars.values()))),
                     settings=settings, store=plan.store, state_dir=settings.state_dir)


def _set_hook(session_ref: list):
    # The hook analyzer is created inside cerebro.run(): the session learns of it when it starts.
    return lambda hook: setattr(session_ref[0], "hook", hook)


class _Committer:
    """The writer's sink: write the batch, then (batches committed in bar order only) save its
    checkpoint and drop the checkpointed bars from the inbox."""

    def __init__(self, store, session: PaperSession, state_dir: Path | None, inbox: Inbox | None):
        self.store, self.session, self.state_dir, self.inbox = store, session, state_dir, inbox
        self._waiting: dict[int, Checkpoint | None] = {}      # first bar of a committed batch -> its checkpoint
        self._ends: dict[int, int] = {}

    def __call__(self, table) -> None:
        self.store.write_fmel(table)
        if table.num_rows == 0:
            return
        first = table.column("bar_number")[0].as_py()
        self._waiting[first] = checkpoint_of(table)
        self._ends[first] = table.column("bar_number")[-1].as_py() + 1
        newest = None
        # A batch spilled and written later leaves a hole: checkpoints wait until it is filled.
        while self.session.committed in self._waiting:
            first = self.session.committed
            newest = self._waiting.pop(first) or newest
            self.session.committed = self._ends.pop(first)
        if newest is not None and self.state_dir is not None:
            _checkpoint.save(newest, self.state_dir)
            if self.inbox is not None:
                self.inbox.compact(newest.last)


def _warmup_steps(history: Bars, symbols) -> int:
    # The strategy steps once per distinct timestamp of the history (all its symbols together).
    frames = [history[s].index for s in symbols if history.get(s) is not None and len(history[s])]
    return len(frames[0].append(frames[1:]).unique()) if frames else 0


def _stop_after(steps: int, recorder: FmelRecorder, session_ref: list, then):
    """``then`` for each bar, and a stop once the bar numbered ``steps - 1`` of this process is being
    decided: the session's hook runs on the strategy's thread before the bar is recorded, and
    cerebro stops at the end of that bar, so exactly ``steps`` bars are recorded."""
    def decided() -> None:
        then()
        if recorder.bars + 1 >= steps:
            session_ref[0].stop()
    return decided


def _replay_drained(session: PaperSession) -> bool:
    # A replay has published its last bar and every bar it sent has reached its feed and been taken
    # off the queue: the run is over once the strategy had a moment to see the last one.
    replay = session.replay
    if not replay.finished.is_set():
        return False
    if sum(session.router.counts.values()) < replay.published:
        return False
    if any(feed.haslivedata() for feed in session.feeds.values()):
        return False
    return session.last_bar_at is None or time.time() - session.last_bar_at > 1.0


def _heartbeats(store, run_id: str, stopping: threading.Event) -> None:
    # Readers on other machines (the API, notebooks) tell a live pod from a lost one by these.
    from farmkit.fmel.registry import HEARTBEAT_EVERY

    while True:
        try:
            store.runs.heartbeat(run_id)
        except Exception as exc:  # noqa: BLE001 - a store outage must not stop trading; the next beat may pass
            log.warning("could not record the run's heartbeat (%s: %s)", type(exc).__name__, exc)
        if stopping.wait(HEARTBEAT_EVERY):
            return


def _watch(session: PaperSession, max_bars: int | None, duration: float | None, status_every: float) -> None:
    # Stops the session from outside the strategy thread: by bar count, wall time or a stop file;
    # and keeps the status file fresh for the runner.
    deadline = time.monotonic() + duration if duration else None
    next_status = next_retry = 0.0
    backoff = 1.0
    while not session.stopping.wait(0.05):
        if max_bars is not None and session.recorder.bars >= max_bars:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        if session.replay is not None and _replay_drained(session):
            break
        handle = session.handle
        if handle is not None and not handle.running and time.monotonic() >= next_retry:
            try:
                session.resubscribe()
            except Exception as exc:  # noqa: BLE001 - the bus may still be down: try again shortly
                log.warning("resubscribing failed (%s: %s); trying again in %.0f s", type(exc).__name__, exc, backoff)
                next_retry, backoff = time.monotonic() + backoff, min(backoff * 2, 30.0)
            else:
                backoff = 1.0
        if session.state_dir is not None and time.monotonic() >= next_status:
            if _checkpoint.stop_requested(session.state_dir):
                break
            session.write_status()
            next_status = time.monotonic() + status_every
    session.stop()
