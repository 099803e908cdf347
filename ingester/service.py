"""The ingester: Alpaca streams (and news polling) -> wire messages on the bus, until SIGTERM.

    ingester = Ingester(IngestSettings.from_env())
    code = ingester.run(stop_event)     # 0 after a clean stop (publisher flushed); 3 on a fatal feed error
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import pandas as pd

from farmkit.bus import open_bus
from farmkit.health import HealthServer, Metrics
from farmkit.model import Bar, MalformedMessage, NewsItem
from ingester import sharding
from ingester.backfill import Backfiller, alpaca_bars_fetch
from ingester.news import NewsCursor, NewsPoller, RestBudget, alpaca_news_fetch
from ingester.publisher import BatchPublisher, Outgoing, open_sender
from ingester.sequencer import BarSequencer
from ingester.settings import IngestSettings
from ingester.sources import load_bars, replay
from ingester.streams import FeedConnection, FrameErrorCounter
from ingester.watchdog import MarketClock, Watchdog, alpaca_clock
from ingester.wire import SOURCES, Revisions, stream_bar, stream_trade

log = logging.getLogger("ingester")
EXIT_OK, EXIT_UNFLUSHED, EXIT_FATAL = 0, 1, 3
STATE_EVERY = 5.0                         # seconds between saves of the last published bar per symbol
_TYPES = {"b": "bar", "u": "updated_bar", "d": "daily_bar", "t": "trade"}

_HELP = {
    "farm_ingest_messages_received_total": ("counter", "Stream and REST messages received, by feed and type."),
    "farm_ingest_messages_published_total": ("counter", "Messages acknowledged by the bus, by topic and type."),
    "farm_ingest_malformed_total": ("counter", "Messages or frames that could not be read (logged, skipped)."),
    "farm_ingest_duplicates_total": ("counter", "Live bars already published (e.g. by a backfill), skipped."),
    "farm_ingest_reconnects_total": ("counter", "Stream connections after the first one, by feed."),
    "farm_ingest_watchdog_reconnects_total": ("counter", "Reconnects the staleness watchdog forced, by feed."),
    "farm_ingest_stream_errors_total": ("counter", "Error frames from Alpaca, by feed and code."),
    "farm_ingest_backfilled_bars_total": ("counter", "Minute bars published from the REST backfill, by feed."),
    "farm_ingest_backfill_failures_total": ("counter", "Gaps the backfill could not fill, by feed."),
    "farm_ingest_gaps_total": ("counter", "Gaps found in a symbol's minute bars, by feed."),
    "farm_ingest_news_polls_total": ("counter", "News polls, by outcome."),
    "farm_ingest_last_message_age_seconds": ("gauge", "Seconds since the feed's last message (or connection)."),
    "farm_ingest_connected": ("gauge", "1 while the feed's stream is connected."),
    "farm_ingest_subscribed": ("gauge", "1 while the feed's stream is subscribed."),
    "farm_ingest_held_symbols": ("gauge", "Symbols whose live bars wait for a backfill, by feed."),
}


class Ingester:
    """Builds everything from settings; the test seams (``sender``, ``clock``, ``fetch_bars``,
    ``fetch_news``) replace the Alpaca/Pub/Sub adapters where a test cannot reach the real ones."""

    def __init__(self, settings: IngestSettings, *, bus=None, sender=None, clock: Callable[[], bool] | None = None,
                 fetch_bars: dict[str, Callable] | None = None, fetch_news: Callable | None = None,
                 health_port: int | None = None, reconnect_min_seconds: float = 1.0, flush_timeout: float = 20.0):
        self.settings, self.flush_timeout = settings, flush_timeout
        self.metrics = Metrics({"shard": str(settings.shard_index)})
        for name, (kind, text) in _HELP.items():
            self.metrics.describe(name, kind, text)
        self.bus = bus if bus is not None else open_bus(settings.farm.bus)
        self._own_bus = bus is None
        self.topics = {"bar": settings.market_topic, "updated_bar": settings.market_topic,
                       "news": settings.news_topic, "daily_bar": settings.daily_topic, "trade": settings.trades_topic}
        for topic in sorted(set(self.topics.values())):
            self.bus.ensure_topic(topic)
        self.publisher = BatchPublisher(sender or open_sender(settings.farm.bus, self.bus), metrics=self.metrics,
                                        spill_dir=settings.farm.home / "ingester", on_sent=self._sent)
        self.health_port = settings.farm.health_port if health_port is None else health_port
        self.stop_event = threading.Event()
        self.fatal: str | None = None
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.revisions = Revisions()
        self.connections: list[FeedConnection] = []
        self.sequencers: dict[str, BarSequencer] = {}
        self.backfillers: dict[str, Backfiller] = {}
        self.news: NewsPoller | None = None
        self.budget = RestBudget(settings.rest_per_minute)
        self.assigned = self._assignment()
        self._malformed_logged = 0
        self._replay_done = False
        # The last bar of each symbol the bus acknowledged, saved now and then: a restarted ingester
        # backfills from there, so a restart is one more gap that consumers never see.
        self.state_path = settings.farm.home / "ingester" / f"last-bars-shard{settings.shard_index}.json"
        self._acked: dict[str, str] = {}
        self._acked_saved: dict[str, str] = {}
        self._state_due = 0.0
        if settings.source == "alpaca":
            self._build_alpaca(clock, fetch_bars or {}, fetch_news, reconnect_min_seconds)
            if settings.backfill and settings.restart_backfill_hours > 0:
                self._resume_from_state()

    # -- building -------------------------------------------------------------------------------------

    def _assignment(self) -> dict[str, tuple[str, ...]]:
        s = self.settings
        feeds = {"stocks": s.stocks, "crypto": s.crypto, "news": s.news}
        if s.source != "alpaca":
            return {"replay": s.stocks}
        units = sharding.assign(sharding.units_for(feeds, s.shard_by), s.shard_index, s.shard_count)
        mine: dict[str, tuple[str, ...]] = {}
        for feed, symbol in units:
            mine[feed] = feeds[feed] if symbol == "*" else (*mine.get(feed, ()), symbol)
        log.info("shard %d of %d serves %s", s.shard_index, s.shard_count,
                 "; ".join(f"{f}: {len(v)} symbol(s)" if "*" not in v else f"{f}: *" for f, v in mine.items())
                 or "nothing (more replicas than feeds/symbols)")
        return mine

    def _build_alpaca(self, clock, fetch_bars, fetch_news, reconnect_min_seconds: float) -> None:
        s = self.settings
        for feed in ("stocks", "crypto"):
            symbols = self.assigned.get(feed)
            if not symbols:
                continue
            self.sequencers[feed] = BarSequencer(backfill=s.backfill)
            fetch = fetch_bars.get(feed) or alpaca_bars_fetch(feed, s.key_id, s.secret_key, s.feed, s.data_url)
            self.backfillers[feed] = Backfiller(
                feed, fetch, self.budget, on_filled=lambda sym, bars, f=feed: self._filled(f, sym, bars),
                on_failed=lambda sym, why, f=feed: self._unfilled(f, sym, why),
                on_malformed=lambda why, f=feed: self._malformed(f, why))
            conn = FeedConnection(feed, symbols, s.channels, key=s.key_id, secret=s.secret_key, stock_feed=s.feed,
                                  url=s.stream_url or None, on_data=self._on_data, on_event=self._on_event,
                                  reconnect_min_seconds=reconnect_min_seconds)
            self.connections.append(conn)
            self.metrics.set("farm_ingest_last_message_age_seconds", lambda c=conn: self._age(c), feed=conn.name)
            self.metrics.set("farm_ingest_connected", lambda c=conn: float(c.connected), feed=conn.name)
            self.metrics.set("farm_ingest_subscribed", lambda c=conn: float(c.subscribed), feed=conn.name)
            self.metrics.set("farm_ingest_held_symbols", lambda f=feed: float(self.sequencers[f].holding), feed=conn.name)
        if self.connections:
            ask = clock if clock is not None else (alpaca_clock(s.key_id, s.secret_key, s.trading_url)
                                                   if s.key_id and s.secret_key else None)
            self.market = MarketClock(ask)
            self.watchdog = Watchdog(self.connections, self.market, s.watchdog_seconds)
        if self.assigned.get("news"):
            fetch = fetch_news or alpaca_news_fetch(s.key_id, s.secret_key, self.assigned["news"], s.data_url,
                                                    self.budget, self.stop_event)
            cursor = NewsCursor(pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5))
            self.news = NewsPoller(fetch, self._publish_news, cursor, s.poll_seconds, self.budget,
                                   on_malformed=lambda why: self._malformed("news", why),
                                   on_poll=lambda ok: self.metrics.inc("farm_ingest_news_polls_total",
                                                                       outcome="ok" if ok else "failed"))

    # -- data path ------------------------------------------------------------------------------------

    def _on_data(self, conn: FeedConnection, msg: dict) -> None:
        kind = _TYPES.get(msg.get("T"), str(msg.get("T")))
        self.metrics.inc("farm_ingest_messages_received_total", feed=conn.name, type=kind)
        source = SOURCES[conn.feed]
        try:
            if kind in ("bar", "updated_bar"):
                revision = 0
                if kind == "updated_bar":
                    revision = self.revisions.next(msg.get("S", ""), stream_bar(msg, source).timestamp)
                bar = stream_bar(msg, source, revision)
                with self._lock:
                    out, gap, outcome = self.sequencers[conn.feed].live(bar, time.monotonic())
                    for item in out:
                        self._publish_bar(item)
                if outcome == "duplicate":
                    self.metrics.inc("farm_ingest_duplicates_total", feed=conn.name)
                if gap is not None:
                    self.metrics.inc("farm_ingest_gaps_total", feed=conn.name)
                    self.backfillers[conn.feed].request(gap)
            elif kind == "daily_bar":
                self._publish(stream_bar(msg, source), "daily_bar")
            elif kind == "trade":
                self._publish(stream_trade(msg, source), "trade")
        except MalformedMessage as exc:
            self._malformed(conn.name, exc.reason)

    def _publish(self, record, kind: str) -> None:
        self.publisher.publish(self.topics[kind], record.to_wire(), record.attributes(), record.symbol)

    def _publish_bar(self, bar: Bar) -> None:
        self.publisher.publish(self.topics["bar"], bar.to_wire(), bar.attributes(), bar.symbol)

    def _publish_news(self, item: NewsItem) -> None:
        self.metrics.inc("farm_ingest_messages_received_total", feed="news", type="news")
        self.publisher.publish(self.topics["news"], item.to_wire(), item.attributes(), "")

    def _sent(self, group: list[Outgoing]) -> None:
        counts: dict[str, int] = {}
        newest: dict[str, Outgoing] = {}
        for item in group:
            kind = item.attributes.get("type", "")
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "bar" and item.topic == self.topics["bar"]:
                newest[item.ordering_key] = item
        if newest:
            stamps = {symbol: json.loads(item.data)["timestamp"] for symbol, item in newest.items()}
            with self._lock:
                for symbol, stamp in stamps.items():
                    old = self._acked.get(symbol)
                    if old is None or pd.Timestamp(stamp) > pd.Timestamp(old):
                        self._acked[symbol] = stamp
        for kind, n in counts.items():
            self.metrics.inc("farm_ingest_messages_published_total", n, topic=group[0].topic, type=kind)

    def _malformed(self, feed: str, reason: str) -> None:
        self.metrics.inc("farm_ingest_malformed_total", feed=feed)
        self._malformed_logged += 1
        if self._malformed_logged <= 20 or self._malformed_logged % 1000 == 0:
            log.warning("%s: skipped a malformed message (%s) [%d so far]", feed, reason, self._malformed_logged)

    def _filled(self, feed: str, symbol: str, bars: list[Bar]) -> None:
        with self._lock:
            out = self.sequencers[feed].filled(symbol, bars)
            for bar in out:
                self._publish_bar(bar)
        backfilled = sum(1 for b in out if b.source == "backfill")
        if backfilled:
            self.metrics.inc("farm_ingest_backfilled_bars_total", backfilled, feed=feed)
            log.info("%s: backfilled %d bar(s) of %s", feed, backfilled, symbol)

    def _unfilled(self, feed: str, symbol: str, reason: str) -> None:
        self.metrics.inc("farm_ingest_backfill_failures_total", feed=feed)
        log.error("%s: could not backfill the gap of %s (%s); its held bars go out now and the hole stays "
                  "(check FARM_INGEST_DATA_URL and the keys' data plan)", feed, symbol, reason)
        with self._lock:
            for bar in self.sequencers[feed].failed(symbol):
                self._publish_bar(bar)

    def _on_event(self, conn: FeedConnection, kind: str, detail: str) -> None:
        if kind == "connected":
            if conn.connections > 1:
                self.metrics.inc("farm_ingest_reconnects_total", feed=conn.name)
                with self._lock:
                    self.sequencers[conn.feed].reconnected(time.monotonic())
            log.info("%s: connected (%s)", conn.name, detail)
        elif kind == "subscribed":
            log.info("%s: subscribed (%s)", conn.name, detail)
        elif kind == "disconnected":
            log.info("%s: disconnected; alpaca-py reconnects with backoff", conn.name)
        elif kind == "reconnect":
            self.metrics.inc("farm_ingest_watchdog_reconnects_total", feed=conn.name)
        elif kind == "error":
            self.metrics.inc("farm_ingest_stream_errors_total", feed=conn.name, code=str(conn.last_error or ""))
            log.error("%s", detail)
        elif kind == "fatal" and self.fatal is None:
            self.fatal = detail
            log.error("fatal: %s", detail)
            self.stop_event.set()

    def _frame_error(self, feed: str) -> bool:
        conn = next((c for c in self.connections if c.feed == feed), None)
        if conn is None or not conn.connected:    # a refused connect or auth, reported as such elsewhere
            return False
        self._malformed(conn.name, "a frame could not be read")
        return True

    # -- health ---------------------------------------------------------------------------------------

    def _age(self, conn: FeedConnection) -> float | None:
        since = conn.last_message_at or conn.connected_at
        return None if since is None else max(0.0, time.monotonic() - since)

    def ready(self) -> tuple[bool, str]:
        """(ready, reason): connected, subscribed, data fresh (or the market closed), publishing works."""
        if self.fatal:
            return False, f"fatal: {self.fatal}"
        problems, fine = [], []
        for conn in self.connections:
            age = self._age(conn)
            if not conn.connected:
                problems.append(f"{conn.name} not connected ({conn.last_error or 'connecting'})")
            elif not conn.subscribed:
                problems.append(f"{conn.name} connected, not subscribed yet")
            elif self.market.is_open(conn.feed) and age is not None and age > self.settings.watchdog_seconds:
                problems.append(f"{conn.name} silent for {age:.0f} s while the market is open")
            else:
                fine.append(f"{conn.name} last message {age:.1f} s ago" if age is not None else conn.name)
        if self.news is not None:
            if self.news.error and (self.news.last_success is None
                                    or time.monotonic() - self.news.last_success > 6 * self.settings.poll_seconds):
                problems.append(f"news polls failing ({self.news.error})")
            else:
                fine.append("news polling")
        failing = self.publisher.failing_since
        if failing is not None and time.monotonic() - failing > 30:
            problems.append(f"publishing has failed for {time.monotonic() - failing:.0f} s "
                            f"({self.publisher.backlog} message(s) waiting)")
        if self.settings.source != "alpaca":
            fine.append(f"{self.settings.source} source {'finished' if self._replay_done else 'running'}")
        if problems:
            return False, "; ".join(problems)
        return True, "; ".join(fine) or "nothing assigned to this shard"

    # -- running --------------------------------------------------------------------------------------

    def _thread(self, name: str, target: Callable[[threading.Event], object]) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def run(self, stop: threading.Event | None = None) -> int:
        """Run until ``stop`` (or SIGTERM through the CLI) or a fatal feed error; flush; return the exit code."""
        stop = stop or threading.Event()
        health = HealthServer(self.ready, self.metrics.render, port=self.health_port).start()
        self.health = health
        counter = FrameErrorCounter(self._frame_error).install()
        log.info("ingester: publishing to %s (%s), health on :%d", self.settings.farm.bus,
                 ", ".join(sorted(set(self.topics.values()))), health.port)
        try:
            if self.settings.source != "alpaca":
                self._thread("replay", self._replay)
            for feed, backfiller in self.backfillers.items():
                self._thread(f"backfill-{feed}", backfiller.run)
            for conn in self.connections:
                conn.start()
            if self.connections:
                self._thread("watchdog", self.watchdog.run)
            if self.news is not None:
                self._thread("news", self.news.run)
            while not (stop.is_set() or self.stop_event.is_set()):
                self._maintain()
                stop.wait(0.1)
        finally:
            self.stop_event.set()
            for conn in self.connections:
                conn.stop()
            for thread in self._threads:
                thread.join(10)
            spilled = self.publisher.close(self.flush_timeout)
            if self.settings.source == "alpaca":
                self.save_state()
            counter.remove()
            if self._own_bus:
                self.bus.close()
            health.close()
        if self.fatal:
            return EXIT_FATAL
        if spilled:
            return EXIT_UNFLUSHED
        log.info("ingester stopped; every message was published (%d)", self.publisher.sent)
        return EXIT_OK

    def _resume_from_state(self) -> None:
        """Seed each feed's sequencer with the last bars a previous process published: the first live bar
        of a symbol then shows the gap, and a symbol that stays quiet is backfilled up to now."""
        try:
            saved = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("could not read %s (%s); starting without a restart backfill", self.state_path, exc)
            return
        oldest = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=self.settings.restart_backfill_hours)
        now, seeded = time.monotonic(), 0
        for symbol, stamp in saved.items():
            feed = self._feed_of(symbol)
            timestamp = pd.Timestamp(stamp)
            if feed is None or timestamp < oldest:
                continue
            self.sequencers[feed].last[symbol] = timestamp
            self._acked[symbol] = self._acked_saved[symbol] = stamp
            seeded += 1
        for sequencer in self.sequencers.values():
            sequencer.reconnected(now)
        if seeded:
            log.info("restart: %d symbol(s) carry on from their last published bar; missing minutes are backfilled",
                     seeded)

    def _feed_of(self, symbol: str) -> str | None:
        for feed in ("stocks", "crypto"):
            symbols = self.assigned.get(feed) or ()
            if feed in self.sequencers and (symbol in symbols or ("*" in symbols and ("/" in symbol) == (feed == "crypto"))):
                return feed
        return None

    def save_state(self) -> None:
        with self._lock:
            if self._acked == self._acked_saved:
                return
            snapshot = dict(self._acked)
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.state_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(snapshot, sort_keys=True))
            temporary.replace(self.state_path)
            self._acked_saved = snapshot
        except OSError as exc:
            log.warning("could not save %s (%s); a restart would not know where to backfill from", self.state_path, exc)

    def _maintain(self) -> None:
        now = time.monotonic()
        if self.settings.source == "alpaca" and now >= self._state_due:
            self.save_state()
            self._state_due = now + STATE_EVERY
        for feed, sequencer in self.sequencers.items():
            with self._lock:
                due = sequencer.due(now, self.settings.backfill_wait_seconds)
            for gap in due:
                self.backfillers[feed].request(gap)

    def _replay(self, stop: threading.Event) -> None:
        s = self.settings
        try:
            bars = load_bars(s.source, s.stocks, s.days)
            name = "synthetic" if s.source == "synthetic" else "replay"
            sent = replay(bars, name, s.speed, self._publish_bar, stop)
            log.info("%s: published %d bar(s); stopping", s.source, sent)
        except Exception as exc:  # noqa: BLE001 - reported and fatal
            self.fatal = f"{s.source}: {type(exc).__name__}: {exc}"
            log.error("fatal: %s", self.fatal)
        self._replay_done = True
        self.stop_event.set()
