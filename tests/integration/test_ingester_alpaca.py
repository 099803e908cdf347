"""The ingester against the real alpaca-py client and a local server speaking Alpaca's stream (msgpack) and
REST protocols, publishing to the memory bus (the Pub/Sub emulator runs in test_ingester_pubsub.py).

Chaos: connection drops every K messages, a silent stall longer than the watchdog limit, 402 then success,
406, 409 (fatal, exit 3), malformed frames. The consumer must see every minute bar of every symbol exactly
once after dedupe on (symbol, timestamp), in order per symbol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

import farmkit as fk
from farmkit.bus import open_bus
from farmkit.model import parse_message
from ingester.service import Ingester
from ingester.settings import IngestSettings
from tests.alpaca_server import AlpacaServer, news_item
from tests.alpaca_stream import AlpacaStreamServer

SYMBOLS = ["AAPL", "MSFT"]
MINUTES = 20
ROOT = Path(__file__).resolve().parents[2]


def eventually(condition, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)   # a poll interval, not a wait for correctness
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def frames():
    bars = fk.data.synthetic(SYMBOLS, start="2024-01-02", days=1, freq="1min", seed=3)
    return {s: bars[s].iloc[:MINUTES] for s in SYMBOLS}


@pytest.fixture
def rest(frames):
    with AlpacaServer(stock_bars=frames, page_size=7) as server:
        yield server


class Consumer:
    """An ordered subscription on the bus; keeps every bar in arrival order."""

    def __init__(self, bus, topic="market-data", name="consumer"):
        self.records, self.lock = [], threading.Lock()
        bus.ensure_subscription(name, topic, enable_message_ordering=True)
        self.handle = bus.subscribe(name, self._on)

    def _on(self, message):
        record = parse_message(message.data, dict(message.attributes))
        with self.lock:
            self.records.append(record)
        message.ack()

    def deduped(self) -> dict[str, list[pd.Timestamp]]:
        out: dict[str, list] = {}
        with self.lock:
            for bar in self.records:
                if bar.revision == 0 and bar.timestamp not in out.setdefault(bar.symbol, []):
                    out[bar.symbol].append(bar.timestamp)
        return out


def settings(stream, rest, tmp_path, **extra) -> IngestSettings:
    env = {"FARM_HOME": str(tmp_path), "FARM_INGEST_STOCKS": ",".join(SYMBOLS), "FARM_INGEST_STREAM_URL": stream.url,
           "FARM_INGEST_DATA_URL": rest.url, "FARM_INGEST_TRADING_URL": rest.url,
           "FARM_INGEST_WATCHDOG_SECONDS": "0.6", "FARM_INGEST_BACKFILL_WAIT_SECONDS": "0.5",
           "APCA_API_KEY_ID": stream.key_id, "APCA_API_SECRET_KEY": stream.secret_key,
           **{f"FARM_INGEST_{k.upper()}": v for k, v in extra.items()}}
    return IngestSettings.from_env(env)


class Running:
    def __init__(self, ingester: Ingester):
        self.ingester, self.stop, self.code = ingester, threading.Event(), None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.code = self.ingester.run(self.stop)

    def __enter__(self):
        self.thread.start()
        return self.ingester

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def minute(frames, i):
    return {s: frames[s].iloc[[i]] for s in SYMBOLS}


def expected(frames):
    return {s: list(frames[s].index) for s in SYMBOLS}


def test_stall_longer_than_the_watchdog_reconnects_and_backfills(frames, rest, tmp_path):
    bus = open_bus("memory://")
    consumer = Consumer(bus)
    with AlpacaStreamServer() as stream:
        ingester = Ingester(settings(stream, rest, tmp_path), bus=bus, health_port=0, reconnect_min_seconds=0.05)
        with Running(ingester):
            stream.wait_subscribed(SYMBOLS, timeout=10)
            for i in range(8):
                stream.send_bars(minute(frames, i))
            stream.stall()                                       # connected, silent; data sent now is lost
            for i in range(8, 13):
                assert stream.send_bars(minute(frames, i)) == 0
            eventually(lambda: ingester.metrics.value("farm_ingest_watchdog_reconnects_total") >= 1,
                       what="the watchdog to fire")
            ready, reason = ingester.ready()
            assert not ready
            stream.resume()
            eventually(lambda: stream.connections >= 2, what="a second connection")
            stream.wait_subscribed(SYMBOLS, timeout=10)
            for i in range(13, MINUTES):
                stream.send_bars(minute(frames, i))
            eventually(lambda: consumer.deduped() == expected(frames), what="every bar")
            assert ingester.metrics.value("farm_ingest_backfilled_bars_total") == 2 * 5
            eventually(lambda: ingester.ready()[0], what="ready again")
    bus.close()
    assert all(b.source == "backfill" for b in consumer.records if 8 <= list(frames[b.symbol].index).index(b.timestamp) < 13)
    assert rest.requests_to("/v2/stocks/bars")


def test_drop_every_k_messages_loses_nothing_after_dedupe(frames, rest, tmp_path):
    bus = open_bus("memory://")
    consumer = Consumer(bus)
    with AlpacaStreamServer(drop_every=7) as stream:
        ingester = Ingester(settings(stream, rest, tmp_path), bus=bus, health_port=0, reconnect_min_seconds=0.05)
        with Running(ingester):
            stream.wait_subscribed(SYMBOLS, timeout=10)
            for i in range(MINUTES):
                stream.send_bars(minute(frames, i))
                time.sleep(0.03)   # spreads the minutes over reconnects, so some are sent while disconnected
            eventually(lambda: consumer.deduped() == expected(frames), what="every bar")
            assert stream.connections >= 3
            assert ingester.metrics.value("farm_ingest_reconnects_total") >= 2
    bus.close()


def test_auth_failure_then_success_and_malformed_frames(frames, rest, tmp_path, caplog):
    bus = open_bus("memory://")
    consumer = Consumer(bus)
    with AlpacaStreamServer() as stream:
        stream.reject_next_auth(402)
        ingester = Ingester(settings(stream, rest, tmp_path), bus=bus, health_port=0, reconnect_min_seconds=0.05)
        with Running(ingester):
            stream.wait_subscribed(SYMBOLS, timeout=10)
            stream.send_bars(minute(frames, 0))
            stream.send_raw(b"\xc1\xc1 not msgpack")
            stream.send_raw(b"\x91\x81\xa1T\xa1b")             # [{"T": "b"}]: a bar without symbol and fields
            stream.send([{"T": "b", "S": "AAPL", "t": "2024-01-02T14:31:00Z", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1,
                          "n": 1, "vw": 1}])                    # t as a string: malformed
            for i in range(1, 4):
                stream.send_bars(minute(frames, i))
            eventually(lambda: consumer.deduped() == {s: list(frames[s].index[:4]) for s in SYMBOLS}, what="bars")
            eventually(lambda: ingester.metrics.value("farm_ingest_malformed_total") >= 2, what="malformed counted")
            health = f"http://127.0.0.1:{ingester.health.port}"
            metrics = urllib.request.urlopen(f"{health}/metrics").read().decode()
            assert 'farm_ingest_messages_received_total{feed="stocks:iex",shard="0",type="bar"} 9' in metrics
            assert 'farm_ingest_malformed_total{feed="stocks:iex",shard="0"} 2' in metrics
            assert "farm_ingest_publish_latency_seconds_count" in metrics
            assert urllib.request.urlopen(f"{health}/readyz").status == 200
            assert urllib.request.urlopen(f"{health}/healthz").read() == b"ok\n"
    bus.close()
    assert "authentication failed on the stocks:iex stream" in caplog.text


def test_406_says_another_connection_holds_the_feed(rest, tmp_path, caplog):
    from alpaca.data.live import StockDataStream

    with AlpacaStreamServer() as stream:
        other = StockDataStream(stream.key_id, stream.secret_key, url_override=stream.stock_url("iex"))

        async def ignore(_):
            pass
        other.subscribe_bars(ignore, "SPY")
        threading.Thread(target=other.run, daemon=True).start()
        stream.wait_subscribed(["SPY"], timeout=10)
        ingester = Ingester(settings(stream, rest, tmp_path), bus=open_bus("memory://"), health_port=0,
                            reconnect_min_seconds=0.05)
        with Running(ingester):
            eventually(lambda: "another connection already holds the stocks:iex" in caplog.text, what="406 message")
            ready, reason = ingester.ready()
            assert not ready and "not connected" in reason
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://127.0.0.1:{ingester.health.port}/readyz")
            assert answer.value.code == 503
        other.stop()


def test_409_exits_non_zero_naming_the_feed_and_plan(rest, tmp_path):
    with AlpacaStreamServer() as stream:
        stream.insufficient_subscription("sip")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update({"FARM_HOME": str(tmp_path), "FARM_INGEST_STOCKS": "AAPL", "FARM_INGEST_FEED": "sip",
                    "FARM_INGEST_STREAM_URL": stream.url, "FARM_INGEST_DATA_URL": rest.url,
                    "FARM_INGEST_TRADING_URL": rest.url, "APCA_API_KEY_ID": stream.key_id,
                    "APCA_API_SECRET_KEY": stream.secret_key, "FARM_HEALTH_PORT": "0"})
        done = subprocess.run([sys.executable, "-m", "ingester"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "insufficient subscription" in done.stderr and "stocks:sip" in done.stderr
    assert "FARM_INGEST_FEED=iex" in done.stderr


def test_news_polling_publishes_new_articles_and_new_versions_once(tmp_path):
    now = pd.Timestamp.now(tz="UTC").floor("s")
    with AlpacaServer(news=[news_item(1, "AAPL beats", ["AAPL"], now - pd.Timedelta(minutes=2)),
                            news_item(2, "MSFT", ["MSFT"], now - pd.Timedelta(minutes=1))], page_size=1) as rest:
        env = {"FARM_HOME": str(tmp_path), "FARM_INGEST_NEWS": "AAPL,MSFT", "FARM_INGEST_DATA_URL": rest.url,
               "FARM_INGEST_POLL_SECONDS": "0.1", "APCA_API_KEY_ID": rest.key_id, "APCA_API_SECRET_KEY": rest.secret_key}
        bus = open_bus("memory://")
        consumer = Consumer(bus, topic="news-data", name="news-consumer")
        ingester = Ingester(IngestSettings.from_env(env), bus=bus, health_port=0)
        with Running(ingester):
            eventually(lambda: len(consumer.records) == 2, what="two articles")
            rest.update_news(1, now, headline="AAPL beats, updated")
            eventually(lambda: len(consumer.records) == 3, what="the new version")
            polls = ingester.metrics.value("farm_ingest_news_polls_total")
            eventually(lambda: ingester.metrics.value("farm_ingest_news_polls_total") >= polls + 3, what="more polls")
        bus.close()
    assert [(n.id, n.headline) for n in consumer.records] == [(1, "AAPL beats"), (2, "MSFT"), (1, "AAPL beats, updated")]


def test_a_restarted_ingester_backfills_what_it_missed_while_down(frames, rest, tmp_path):
    bus = open_bus("memory://")
    consumer = Consumer(bus)
    with AlpacaStreamServer() as stream:
        first = Ingester(settings(stream, rest, tmp_path), bus=bus, health_port=0, reconnect_min_seconds=0.05)
        with Running(first):
            stream.wait_subscribed(SYMBOLS, timeout=10)
            for i in range(6):
                stream.send_bars(minute(frames, i))
            eventually(lambda: all(len(v) == 6 for v in consumer.deduped().values()) and
                       len(consumer.deduped()) == 2, what="the first six minutes")
        saved = json.loads(first.state_path.read_text())
        assert {s: pd.Timestamp(t) for s, t in saved.items()} == {s: frames[s].index[5] for s in SYMBOLS}
        # minutes 6..11 happen while no ingester runs; the new one hears minute 12 first
        old_enough = {"restart_backfill_hours": str(24 * 365 * 10)}      # the test's bars are from 2024
        second = Ingester(settings(stream, rest, tmp_path, **old_enough), bus=bus, health_port=0, reconnect_min_seconds=0.05)
        with Running(second):
            stream.wait_subscribed(SYMBOLS, timeout=10)
            for i in range(12, MINUTES):
                stream.send_bars(minute(frames, i))
            eventually(lambda: consumer.deduped() == expected(frames), what="every bar, the missed ones backfilled")
            assert second.metrics.value("farm_ingest_backfilled_bars_total") == 2 * 6
    bus.close()
    by_symbol = {s: [b.timestamp for b in consumer.records if b.symbol == s] for s in SYMBOLS}
    assert all(stamps == sorted(stamps) and len(stamps) == len(set(stamps)) for stamps in by_symbol.values())
