"""The real alpaca-py 0.44 client against the local Alpaca stream and news servers on loopback.

Besides checking the fixtures, these tests pin down what alpaca-py does when things go wrong, which is what
the ingester has to be written against:

- auth failure (402) and connection limit (406): logged, then a reconnect with backoff, forever; run() neither
  raises nor returns;
- insufficient subscription (409) at auth: run() returns None, silently (only a log line says why); 409 after
  subscribe: logged only, and the stream sits connected with no data;
- a dropped connection: reconnect and re-subscribe by itself; what the server sent meanwhile is lost;
- a stall: unnoticed unless ``data_timeout`` is set (or the server stops answering pings); a stall while
  connecting waits for ``connected`` with no timeout at all;
- a malformed frame or message: logged, the rest of that frame is lost, the connection stays up.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from datetime import timezone

import pandas as pd
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical.news import NewsClient
from alpaca.data.live import CryptoDataStream, StockDataStream
from alpaca.data.requests import NewsRequest
from alpaca.trading.client import TradingClient

from tests.alpaca_server import AlpacaServer, news_item
from tests.alpaca_stream import AlpacaStreamServer

TIMEOUT = 5.0
ALPACA_LOG = "alpaca.data.live.websocket"


@pytest.fixture
def server():
    with AlpacaStreamServer() as srv:
        yield srv


class Received(list):
    """What alpaca-py handed to ``handler`` (alpaca-py wants a coroutine function, not a callable object)."""

    async def handler(self, item) -> None:
        self.append(item)


def eventually(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # a poll interval, not a wait for correctness


def stock_stream(server, feed: str = "iex", key: str | None = None, **kwargs) -> StockDataStream:
    stream = StockDataStream(key or server.key_id, server.secret_key, feed=DataFeed(feed),
                             url_override=server.stock_url(feed), **kwargs)
    return quick(stream)


def quick(stream):
    # alpaca-py takes no parameter for its reconnect backoff (1 s base, 30 s cap); shorten it so the
    # reconnect tests finish quickly. They count reconnects and never time them.
    stream._reconnect_min_backoff, stream._reconnect_max_backoff = 0.02, 0.1
    return stream


@contextmanager
def running(stream, server):
    """Run ``stream`` in a thread; stop it and check that run() ended on the way out."""
    thread = threading.Thread(target=stream.run, name="alpaca-py-stream", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        eventually(lambda: stream._loop is not None or not thread.is_alive(), "the stream's loop to start")
        if thread.is_alive():
            stream.stop()
            # alpaca-py checks for stop only between reads, which wait up to 5 s: dropping the socket wakes it.
            server.drop_connections()
        thread.join(timeout=TIMEOUT)
        assert not thread.is_alive(), "stream.run() did not end after stop()"


def minute_bars(start: str, n: int, price: float, volume: float = 100) -> pd.DataFrame:
    index = pd.date_range(start, periods=n, freq="1min", tz="UTC")
    close = [price + i for i in range(n)]
    return pd.DataFrame({"open": [c - 0.5 for c in close], "high": [c + 1 for c in close],
                         "low": [c - 1 for c in close], "close": close, "volume": [volume * (i + 1) for i in range(n)],
                         "trade_count": [10 + i for i in range(n)], "vwap": [c - 0.25 for c in close]}, index=index)


# --- bars ----------------------------------------------------------------------------------------------


def test_stock_bars_arrive_with_exact_fields_and_timestamps(server):
    frames = {"AAPL": minute_bars("2024-01-02 14:30", 3, 190.0), "MSFT": minute_bars("2024-01-02 14:30", 3, 370.0),
              "TSLA": minute_bars("2024-01-02 14:30", 3, 250.0)}
    bars = Received()
    stream = stock_stream(server)
    stream.subscribe_bars(bars.handler, "AAPL", "MSFT")
    with running(stream, server):
        assert server.wait_subscribed(["AAPL", "MSFT"])["bars"] == ["AAPL", "MSFT"]
        assert server.send_bars(frames, batch=4) == 6                   # nobody asked for TSLA
        eventually(lambda: len(bars) == 6, "6 bars")
    assert [b.timestamp for b in bars] == sorted(b.timestamp for b in bars)   # time order across symbols
    for bar in bars:
        row = frames[bar.symbol].loc[pd.Timestamp(bar.timestamp)]
        assert bar.timestamp.tzinfo is not None and bar.timestamp.utcoffset().total_seconds() == 0
        assert (bar.open, bar.high, bar.low, bar.close) == (row.open, row.high, row.low, row.close)
        assert (bar.volume, bar.trade_count, bar.vwap) == (row.volume, row.trade_count, row.vwap)
    assert sorted((d.symbol, d.t) for d in server.sent) == sorted(
        (s, t) for s in ("AAPL", "MSFT") for t in frames[s].index)
    assert {d.connection for d in server.sent} == {1} and server.connections == 1


def test_updated_and_daily_bars_reach_their_own_handlers(server):
    minute, updated, daily = Received(), Received(), Received()
    stream = stock_stream(server)
    stream.subscribe_bars(minute.handler, "AAPL")
    stream.subscribe_updated_bars(updated.handler, "AAPL")
    stream.subscribe_daily_bars(daily.handler, "AAPL")
    t0 = pd.Timestamp("2024-01-02 14:30", tz="UTC")
    with running(stream, server):
        server.wait_subscribed(["AAPL"], channel="dailyBars")
        server.send_bars({"AAPL": minute_bars("2024-01-02 14:30", 1, 190.0)})
        # A late trade: the updated bar carries the same t as the bar it replaces.
        server.send_bars([{"S": "AAPL", "t": t0, "o": 189.5, "h": 191.0, "l": 189.0, "c": 190.7, "v": 150,
                           "n": 11, "vw": 190.1}], kind="u")
        server.send_bars([{"symbol": "AAPL", "timestamp": pd.Timestamp("2024-01-02 05:00", tz="UTC"), "open": 187.0,
                           "high": 192.0, "low": 186.0, "close": 191.0, "volume": 5_000_000}], kind="d")
        eventually(lambda: len(minute) == len(updated) == len(daily) == 1, "one bar of each kind")
    assert updated[0].timestamp == minute[0].timestamp and updated[0].close == 190.7 and minute[0].close == 190.0
    assert daily[0].volume == 5_000_000 and daily[0].trade_count is None    # n and vw may be null
    assert [d.kind for d in server.sent] == ["b", "u", "d"]


def test_crypto_stream_with_a_star_subscription_gets_every_crypto_symbol_and_no_stocks(server):
    bars = Received()
    stream = quick(CryptoDataStream(server.key_id, server.secret_key, url_override=server.crypto_url()))
    stream.subscribe_bars(bars.handler, "*")
    btc = minute_bars("2024-01-02 00:00", 2, 42_000.0, volume=0.25)
    with running(stream, server):
        assert server.wait_subscribed(["BTC/USD"])["bars"] == ["*"]
        assert server.current_subscriptions == {"crypto/us": {
            "trades": [], "quotes": [], "orderbooks": [], "bars": ["*"], "updatedBars": [], "dailyBars": []}}
        assert server.send_bars({"BTC/USD": btc, "ETH/USD": minute_bars("2024-01-02 00:00", 1, 2_300.0, volume=0),
                                 "AAPL": minute_bars("2024-01-02 14:30", 1, 190.0)}) == 3
        eventually(lambda: len(bars) == 3, "3 crypto bars")
    assert sorted(b.symbol for b in bars) == ["BTC/USD", "BTC/USD", "ETH/USD"]
    assert [b.volume for b in bars if b.symbol == "BTC/USD"] == [0.25, 0.5]     # fractional, sent as floats
    assert [b.volume for b in bars if b.symbol == "ETH/USD"] == [0.0]          # a bar built from quotes only


def test_stock_star_bars_and_trades_share_one_connection(server):
    bars, trades = Received(), Received()
    stream = stock_stream(server)
    stream.subscribe_bars(bars.handler, "*")
    stream.subscribe_trades(trades.handler, "AAPL")
    t = pd.Timestamp("2024-01-02 14:30:01.123456789", tz="UTC")
    with running(stream, server):
        subscription = server.wait_subscribed(["AAPL"], channel="trades")
        assert subscription["bars"] == ["*"]
        assert subscription["corrections"] == subscription["cancelErrors"] == ["AAPL"]   # added with trades
        server.send([{"T": "t", "S": "AAPL", "i": 52983525029461, "x": "V", "p": 190.12, "s": 100, "c": ["@"],
                      "t": t, "z": "C"}, {"T": "t", "S": "MSFT", "i": 1, "x": "V", "p": 1.0, "s": 1, "c": ["@"],
                                          "t": t, "z": "C"}])
        server.send_bars({"XYZ": minute_bars("2024-01-02 14:30", 1, 10.0)})
        eventually(lambda: len(trades) == 1 and len(bars) == 1, "a trade and a bar")
    assert (trades[0].symbol, trades[0].price, trades[0].size) == ("AAPL", 190.12, 100)
    assert trades[0].timestamp == t.floor("us").to_pydatetime()             # alpaca-py keeps microseconds
    assert bars[0].symbol == "XYZ" and server.connections == 1


def test_a_10000_bar_burst_at_the_minute_boundary_arrives_whole(server):
    t = pd.Timestamp("2024-01-02 14:31", tz="UTC")
    burst = [{"S": f"S{i:05d}", "t": t, "o": 10.0, "h": 11.0, "l": 9.0, "c": 10.5, "v": 100 + i, "n": 3, "vw": 10.2}
             for i in range(10_000)]
    bars = Received()
    stream = stock_stream(server)
    stream.subscribe_bars(bars.handler, "*")
    with running(stream, server):
        server.wait_subscribed(["S00000"])
        assert server.send_bars(burst, batch=1_000) == 10_000               # ten frames of a thousand
        eventually(lambda: len(bars) == 10_000, "10,000 bars", timeout=30)
    assert [b.symbol for b in bars] == [m["S"] for m in burst]
    assert {b.timestamp for b in bars} == {t.to_pydatetime()} and len(server.sent) == 10_000


# --- faults --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [402, 406])
def test_a_rejected_auth_is_logged_and_retried_until_it_succeeds(server, code, caplog):
    server.reject_next_auth(code, times=2)
    bars = Received()
    stream = stock_stream(server)
    stream.subscribe_bars(bars.handler, "AAPL")
    with running(stream, server) as thread:
        server.wait_subscribed(["AAPL"])
        server.send_bars({"AAPL": minute_bars("2024-01-02 14:30", 1, 190.0)})
        eventually(lambda: len(bars) == 1, "a bar after the retries")
        assert thread.is_alive()
    assert server.connections == 3 and server.errors_sent == [("iex", code), ("iex", code)]
    logged = [r.getMessage() for r in caplog.records if r.name == ALPACA_LOG and r.levelno >= logging.ERROR]
    assert any("auth failed" in m or "connection limit exceeded" in m for m in logged)


def test_wrong_keys_make_run_retry_forever_without_raising(server):
    stream = stock_stream(server, key="not-the-key")
    stream.subscribe_bars(Received().handler, "AAPL")
    with running(stream, server) as thread:
        server.wait_until(lambda s: s.connections >= 3)
        assert thread.is_alive() and server.current_subscriptions == {}
        assert set(server.errors_sent) == {("iex", 402)}


def test_a_second_connection_on_the_same_feed_gets_406_until_the_first_one_leaves(server):
    first_bars, second_bars = Received(), Received()
    first, second = stock_stream(server), stock_stream(server)
    first.subscribe_bars(first_bars.handler, "AAPL")
    second.subscribe_bars(second_bars.handler, "MSFT")
    crypto = quick(CryptoDataStream(server.key_id, server.secret_key, url_override=server.crypto_url()))
    crypto.subscribe_bars(Received().handler, "BTC/USD")
    with running(first, server), running(crypto, server):
        server.wait_subscribed(["AAPL"], feed="iex")
        server.wait_subscribed(["BTC/USD"], feed="crypto/us")              # another endpoint, its own slot
        with running(second, server) as second_thread:
            server.wait_until(lambda s: s.errors_sent.count(("iex", 406)) >= 2)
            assert second_thread.is_alive()                                # retrying, not failed
            assert server.current_subscriptions["iex"]["bars"] == ["AAPL"]
            server.send_bars({"AAPL": minute_bars("2024-01-02 14:30", 1, 190.0)})
            eventually(lambda: len(first_bars) == 1, "the first connection to keep its data")
            first.stop()
            server.drop_connections("iex")
            server.wait_subscribed(["MSFT"], feed="iex")                   # the slot is free: the second gets in
            server.send_bars({"MSFT": minute_bars("2024-01-02 14:31", 1, 370.0)})
            eventually(lambda: len(second_bars) == 1, "the second connection's data")


def test_insufficient_subscription_at_auth_makes_run_return_silently(server, caplog):
    server.insufficient_subscription("sip")
    stream = stock_stream(server, feed="sip")
    stream.subscribe_bars(Received().handler, "AAPL")
    with running(stream, server) as thread:
        thread.join(timeout=TIMEOUT)
        assert not thread.is_alive(), "run() should have returned after 409"
    assert server.connections == 1 and server.errors_sent == [("sip", 409)]   # no retry, no exception
    assert any("insufficient subscription" in r.getMessage() for r in caplog.records if r.name == ALPACA_LOG)


def test_insufficient_subscription_after_subscribe_is_only_logged(server):
    server.insufficient_subscription("sip", on="subscribe")
    stream = stock_stream(server, feed="sip")
    stream.subscribe_bars(Received().handler, "AAPL")
    with running(stream, server) as thread:
        server.wait_until(lambda s: ("sip", 409) in s.errors_sent)
        # The stream stays connected with nothing subscribed: no data will ever come, and run() goes on.
        assert thread.is_alive() and server.open_connections == 1
        assert server.current_subscriptions["sip"]["bars"] == []
    assert server.connections == 1


def test_a_symbol_limit_error_is_only_logged_and_leaves_the_stream_unsubscribed():
    with AlpacaStreamServer(symbol_limit=2) as server:
        stream = stock_stream(server)
        stream.subscribe_bars(Received().handler, "AAPL", "MSFT", "TSLA")
        with running(stream, server) as thread:
            server.wait_until(lambda s: ("iex", 405) in s.errors_sent)
            assert thread.is_alive() and server.current_subscriptions["iex"]["bars"] == []
        assert server.connections == 1


def test_a_dropped_connection_loses_the_rest_and_alpaca_py_reconnects_and_resubscribes(server):
    server.drop_every = 3
    frame = minute_bars("2024-01-02 14:30", 5, 190.0)
    bars = Received()
    stream = stock_stream(server)
    stream.subscribe_bars(bars.handler, "AAPL")
    with running(stream, server):
        server.wait_subscribed(["AAPL"])
        assert server.send_bars({"AAPL": frame}) == 3                      # then the drop: bars 4 and 5 lost
        server.wait_until(lambda s: s.connections == 2)
        server.wait_subscribed(["AAPL"])                                   # re-subscribed by alpaca-py itself
        assert server.send_bars({"AAPL": frame.iloc[3:]}) == 2
        eventually(lambda: len(bars) == 5, "the resent bars")
    assert [pd.Timestamp(b.timestamp) for b in bars] == list(frame.index)
    assert [d.connection for d in server.sent] == [1, 1, 1, 2, 2]


def test_a_stall_is_noticed_only_with_data_timeout_and_connect_waits_it_out(server):
    bars = Received()
    stream = stock_stream(server, data_timeout=1.0)
    stream.subscribe_bars(bars.handler, "AAPL")
    frame = minute_bars("2024-01-02 14:30", 3, 190.0)
    with running(stream, server):
        server.wait_subscribed(["AAPL"])
        server.send_bars({"AAPL": frame.iloc[:1]})
        eventually(lambda: len(bars) == 1, "the first bar")
        server.stall()
        assert server.send_bars({"AAPL": frame.iloc[1:2]}) == 0             # lost in the stall
        server.wait_until(lambda s: s.connections == 2)                    # data_timeout: alpaca-py reconnects
        assert server.current_subscriptions == {}                          # and waits for "connected"
        server.resume()
        server.wait_subscribed(["AAPL"])
        server.send_bars({"AAPL": frame.iloc[2:]})
        eventually(lambda: len(bars) == 2, "a bar after the stall")
    assert [pd.Timestamp(b.timestamp) for b in bars] == [frame.index[0], frame.index[2]]


def test_without_data_timeout_a_stall_goes_unnoticed(server):
    bars = Received()
    stream = stock_stream(server)
    stream.subscribe_bars(bars.handler, "AAPL")
    frame = minute_bars("2024-01-02 14:30", 2, 190.0)
    with running(stream, server):
        server.wait_subscribed(["AAPL"])
        server.stall()
        assert server.send_bars({"AAPL": frame.iloc[:1]}) == 0
        server.resume()
        server.send_bars({"AAPL": frame.iloc[1:]})
        eventually(lambda: len(bars) == 1, "a bar after the stall")
    assert server.connections == 1                                         # the same socket all along


def test_a_server_that_stops_answering_pings_is_dropped_by_the_keepalive(server):
    # alpaca-py's defaults are a ping every 10 s, 180 s to answer, then up to 2 × 10 s close timeouts before
    # recv() gives up on a server that does not read; shortened here, since the test counts and never times.
    params = {"ping_interval": 0.2, "ping_timeout": 0.3, "close_timeout": 0.2, "max_queue": 1024}
    stream = stock_stream(server, websocket_params=params)
    stream.subscribe_bars(Received().handler, "AAPL")
    with running(stream, server):
        server.wait_subscribed(["AAPL"])
        server.stall(pings=False)
        server.wait_until(lambda s: s.connections >= 2)
        server.resume()
        server.wait_subscribed(["AAPL"])


def test_malformed_frames_are_logged_and_lose_the_rest_of_their_frame(server, caplog):
    bars = Received()
    stream = stock_stream(server)
    stream.subscribe_bars(bars.handler, "AAPL")
    t1, t2, t3 = pd.date_range("2024-01-02 14:30", periods=3, freq="1min", tz="UTC")
    good = {"S": "AAPL", "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1, "n": 1, "vw": 1.0}
    with running(stream, server):
        server.wait_subscribed(["AAPL"])
        server.send_raw(b"\xc1 not msgpack")
        server.send_raw('[{"T":"b","S":"AAPL"}]')                          # JSON in a text frame
        # A string t (not a msgpack Timestamp) breaks its message and every later one in the same frame.
        server.send_bars([{**good, "t": "2024-01-02T14:29:00Z"}, {**good, "t": t1}], batch=2)
        server.send_bars([{**good, "t": t2}, {**good, "t": t3}], batch=2)
        eventually(lambda: len(bars) == 2, "the bars of the intact frame")
    assert [pd.Timestamp(b.timestamp) for b in bars] == [t2, t3] and server.connections == 1
    errors = [r for r in caplog.records if r.name == ALPACA_LOG and r.levelno >= logging.ERROR]
    assert len(errors) >= 3 and all("error during websocket communication" in r.getMessage() for r in errors)


def test_a_path_that_is_not_a_stream_is_refused_at_the_handshake(server):
    with pytest.raises(Exception, match="404"):
        requests.get(server.url.replace("ws://", "http://") + "/v2", timeout=TIMEOUT,
                     headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}).raise_for_status()


# --- news and clock (REST) -----------------------------------------------------------------------------


@pytest.fixture
def rest():
    start = pd.Timestamp("2024-01-02 13:00", tz="UTC")
    items = [news_item(i, f"story {i}", ["AAPL"] if i % 2 else ["MSFT", "AAPL"], start + pd.Timedelta(minutes=i))
             for i in range(1, 26)]
    items += [news_item(100 + i, "elsewhere", ["TSLA"], start + pd.Timedelta(minutes=i)) for i in range(5)]
    with AlpacaServer(news=items, page_size=10) as srv:
        yield srv


def news_client(server) -> NewsClient:
    return NewsClient(server.key_id, server.secret_key, url_override=server.url)


def test_news_client_follows_page_tokens_across_pages(rest):
    got = news_client(rest).get_news(NewsRequest(symbols="AAPL,MSFT", start="2024-01-02T00:00:00Z",
                                                 sort="asc")).data["news"]
    assert [n.id for n in got] == list(range(1, 26))                      # all of them, oldest first, no TSLA
    assert got[0].content == "" and got[0].url == "https://news.example/1"
    assert got[0].created_at.tzinfo is not None
    pages = rest.requests_to("/v1beta1/news")
    assert len(pages) == 3 and "page_token" not in pages[0].query
    assert all(p.query["page_token"] for p in pages[1:]) and {p.query["limit"] for p in pages} == {"50"}


def test_news_limit_descending_order_and_content(rest):
    got = news_client(rest).get_news(NewsRequest(symbols="AAPL", sort="desc", limit=15,
                                                 include_content=True)).data["news"]
    assert [n.id for n in got] == list(range(25, 10, -1))                  # newest first, 15 in all
    assert got[0].content == "<p>story 25</p>"
    assert [p.query["limit"] for p in rest.requests_to("/v1beta1/news")] == ["15", "5"]


def test_news_polling_on_updated_at_sees_edits_and_new_items(rest):
    client = news_client(rest)
    first = client.get_news(NewsRequest(symbols="AAPL", sort="asc")).data["news"]
    high_water = max(n.updated_at for n in first)
    rest.update_news(3, headline="story 3 (corrected)", updated_at="2024-01-02T15:00:00Z")
    rest.add_news(news_item(26, "late story", ["AAPL"], "2024-01-02T15:01:00Z"))
    again = client.get_news(NewsRequest(symbols="AAPL", start=high_water, sort="asc")).data["news"]
    seen = {(n.id, n.updated_at) for n in first}
    fresh = [(n.id, n.headline) for n in again if (n.id, n.updated_at) not in seen]   # start is inclusive
    assert fresh == [(3, "story 3 (corrected)"), (26, "late story")]


def test_news_rate_limit_answers_429_with_retry_after(rest):
    rest.rate_limit = 2
    client = news_client(rest)
    # alpaca-py retries a 429 three times after a fixed 3 s sleep and ignores Retry-After; no sleeping here.
    client._retry_wait = 0
    client.get_news(NewsRequest(symbols="TSLA"))
    client.get_news(NewsRequest(symbols="TSLA"))
    with pytest.raises(APIError) as raised:
        client.get_news(NewsRequest(symbols="TSLA"))
    assert raised.value.status_code == 429 and len(rest.requests_to("/v1beta1/news")) == 2 + 4
    reply = requests.get(rest.url + "/v1beta1/news", headers={"APCA-API-KEY-ID": rest.key_id,
                                                             "APCA-API-SECRET-KEY": rest.secret_key}, timeout=TIMEOUT)
    assert reply.status_code == 429 and int(reply.headers["Retry-After"]) >= 1


def test_clock_can_be_scripted_open_and_closed(rest):
    client = TradingClient(rest.key_id, rest.secret_key, paper=True, url_override=rest.url)
    assert client.get_clock().is_open is True
    rest.market_open = False
    clock = client.get_clock()
    assert clock.is_open is False and clock.next_open.tzinfo is not None
    assert clock.timestamp.astimezone(timezone.utc) <= clock.next_open.astimezone(timezone.utc)
