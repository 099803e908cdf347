"""A local server that speaks Alpaca's market-data stream protocol, so tests can drive the real alpaca-py client.

One server hosts the stock feeds (``/v2/iex``, ``/v2/sip``, ...) and crypto (``/v1beta3/crypto/us``). It speaks
msgpack like Alpaca does with alpaca-py: ``connected`` on connect, ``auth`` → ``authenticated`` or an error
frame, ``subscribe``/``unsubscribe`` → the whole current subscription. Data goes only to connections subscribed
to the symbol (or to ``*``), several messages per frame when asked, with ``t`` as a msgpack Timestamp.

Scripted faults: ``drop_every=K`` (abort the connection after every K data messages), ``stall(seconds)``
(connections stay open but the server sends and answers nothing), ``reject_next_auth(code)``, the real
one-connection-per-feed limit (406), ``insufficient_subscription(feed)`` (409), ``symbol_limit`` (405) and
``send_raw(frame)`` for malformed frames. Observed: ``connections`` (connects so far), ``current_subscriptions``,
``sent`` (every data message written, as a :class:`Delivery`), ``errors_sent`` and ``wait_until(predicate)``.

    with AlpacaStreamServer() as server:
        stream = StockDataStream(server.key_id, server.secret_key, url_override=server.stock_url("iex"))
        stream.subscribe_bars(on_bar, "AAPL")
        threading.Thread(target=stream.run, daemon=True).start()
        server.wait_subscribed(["AAPL"])
        server.send_bars({"AAPL": frame}, batch=500)   # DataFrame per symbol, or dicts in wire form
        server.sent                                    # [Delivery(symbol, t, kind, feed, connection), ...]
        server.wait_until(lambda s: s.connections >= 2)

Alpaca-py reads at most 1 MiB per frame by default, so keep ``batch`` under ~5,000 bars per frame.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from typing import NamedTuple

import msgpack
import pandas as pd
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

ERRORS = {
    400: "invalid syntax", 401: "not authenticated", 402: "auth failed", 403: "already authenticated",
    404: "auth timeout", 405: "symbol limit exceeded", 406: "connection limit exceeded", 407: "slow client",
    409: "insufficient subscription", 410: "invalid subscribe action", 500: "internal error",
}
STOCK_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
                  "corrections", "cancelErrors")
CRYPTO_CHANNELS = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
CHANNEL_OF = {"t": "trades", "q": "quotes", "o": "orderbooks", "b": "bars", "u": "updatedBars",
              "d": "dailyBars", "s": "statuses", "l": "lulds", "c": "corrections", "x": "cancelErrors"}
# Wire names of bar fields, and the DataFrame/long names a test may use instead.
_BAR_FIELDS = {"symbol": "S", "timestamp": "t", "open": "o", "high": "h", "low": "l", "close": "c",
               "volume": "v", "trade_count": "n", "vwap": "vw"}


class Delivery(NamedTuple):
    """One data message the server wrote to a socket: ``t`` is a UTC ``pd.Timestamp`` (None if the message
    had no datetime ``t``), ``kind`` its ``T`` (``b``, ``u``, ``d``, ``t``...), ``connection`` the connection
    number (1 for the first connect)."""

    symbol: str
    t: pd.Timestamp | None
    kind: str
    feed: str
    connection: int


@dataclass(eq=False)
class _Client:
    number: int
    feed: str
    ws: ServerConnection
    authenticated: bool = False
    subscriptions: dict[str, set[str]] = field(default_factory=dict)
    delivered: int = 0                      # data messages, for drop_every
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN

    def wants(self, message: dict) -> bool:
        wanted = self.subscriptions.get(CHANNEL_OF.get(message.get("T"), ""), ())
        return "*" in wanted or message.get("S") in wanted


class AlpacaStreamServer:
    """Alpaca's market-data WebSocket streams on ``127.0.0.1``, free port.

    ``connection_limit`` authenticated connections per feed (Alpaca: 1; None for no limit), ``symbol_limit``
    symbols per connection (Alpaca's free plan: 30 for trades and quotes; None for no limit), ``auth_timeout``
    seconds to authenticate before error 404.
    """

    def __init__(self, key_id: str = "test-key-id", secret_key: str = "test-secret-key", *,
                 drop_every: int | None = None, connection_limit: int | None = 1,
                 symbol_limit: int | None = None, auth_timeout: float = 10.0):
        self.key_id, self.secret_key = key_id, secret_key
        self.drop_every = drop_every
        self.connection_limit = connection_limit
        self.symbol_limit = symbol_limit
        self.auth_timeout = auth_timeout
        self.connections = 0                                # connects so far
        self.sent: list[Delivery] = []
        self.errors_sent: list[tuple[str, int]] = []        # (feed, code) of every error frame
        self._cond = threading.Condition(threading.RLock())
        self._clients: list[_Client] = []
        self._auth_rejections: list[int] = []
        self._subscribe_rejections: list[int] = []
        self._unentitled: dict[str, str] = {}               # feed → "auth" or "subscribe"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._flowing: asyncio.Event | None = None          # cleared while stalled
        self._stall_pings = True
        self._paused: list[asyncio.Transport] = []
        self._stall_timer: asyncio.TimerHandle | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> "AlpacaStreamServer":
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def listen():
            self._flowing = asyncio.Event()
            self._flowing.set()
            # No compression: the burst benchmark measures the client, not zlib. close_timeout keeps stop() quick.
            return await serve(self._serve, "127.0.0.1", 0, process_request=self._check_path, compression=None,
                               close_timeout=1, ping_interval=None)

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(listen())
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="alpaca-stream-server", daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        if self._server is None:
            self._loop.close()
            self._loop = None
            raise RuntimeError(f"the stream server did not start: {failure[0] if failure else 'timeout'}")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> "AlpacaStreamServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stream server is not running; call start() first")
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def stock_url(self, feed: str = "iex") -> str:
        """The ``url_override`` for ``StockDataStream`` on ``feed``."""
        return f"{self.url}/v2/{feed}"

    def crypto_url(self, location: str = "us") -> str:
        """The ``url_override`` for ``CryptoDataStream``."""
        return f"{self.url}/v1beta3/crypto/{location}"

    # --- observing ---------------------------------------------------------------------------------------

    @property
    def current_subscriptions(self) -> dict[str, dict[str, list[str]]]:
        """feed → channel → sorted symbols, over the open authenticated connections."""
        with self._cond:
            out: dict[str, dict[str, list[str]]] = {}
            for client in self._live():
                merged = out.setdefault(client.feed, {})
                for channel, symbols in client.subscriptions.items():
                    merged[channel] = sorted(set(merged.get(channel, ())) | symbols)
            return out

    @property
    def open_connections(self) -> int:
        with self._cond:
            return sum(c.open for c in self._clients)

    def wait_until(self, predicate: Callable[["AlpacaStreamServer"], bool], timeout: float = 5.0) -> None:
        """Poll ``predicate(server)`` until it is true; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met in {timeout} s; connections={self.connections}, "
                                       f"subscriptions={self.current_subscriptions}, errors={self.errors_sent}")
                self._cond.wait(min(remaining, 0.05))

    def wait_subscribed(self, symbols: Iterable[str] = (), *, timeout: float = 5.0, channel: str = "bars",
                        feed: str | None = None) -> dict[str, list[str]]:
        """Wait until an open connection (on ``feed``) is subscribed to all ``symbols`` on ``channel`` (any
        subscription at all when ``symbols`` is empty); return that feed's subscription."""
        wanted = {symbols} if isinstance(symbols, str) else set(symbols)
        found: dict[str, list[str]] = {}

        def subscribed(server):
            for name, channels in server.current_subscriptions.items():
                have = set(channels.get(channel, ()))
                if feed in (None, name) and have and (wanted <= have or "*" in have):
                    found.update(channels)
                    return True
            return False

        self.wait_until(subscribed, timeout)
        return found

    def reset(self) -> None:
        """Forget the logs and the scripted faults (not the open connections); end a stall."""
        self._call(self._end_stall())
        with self._cond:
            self.connections = 0
            self.sent.clear()
            self.errors_sent.clear()
            self._auth_rejections.clear()
            self._subscribe_rejections.clear()
            self._unentitled.clear()
            self.drop_every = None

    # --- data --------------------------------------------------------------------------------------------

    def send_bars(self, bars, kind: str = "b", *, feed: str | None = None, batch: int = 1,
                  timeout: float = 30.0) -> int:
        """Send bars to the connections subscribed to their symbols; return how many messages went out.

        ``bars`` is a mapping of symbol → DataFrame (tz-aware index, ``open high low close volume`` columns,
        optional ``trade_count vwap``), sent in time order across symbols, or an iterable of dicts with wire
        (``S t o h l c v n vw``) or long (``symbol timestamp open ...``) keys. ``kind`` is ``b`` (minute bar),
        ``u`` (updated bar) or ``d`` (daily bar); ``batch`` messages go in one frame.
        """
        return self.send(bar_messages(bars, kind), feed=feed, batch=batch, timeout=timeout)

    def send(self, messages: Iterable[dict], *, feed: str | None = None, batch: int = 1,
             timeout: float = 30.0) -> int:
        """Send data messages (``T`` and ``S`` set) as they are, except that a datetime ``t`` becomes a msgpack
        Timestamp. With ``feed`` None, crypto symbols (``BTC/USD``) go to crypto connections and others to
        every stock feed. Blocks until written; returns how many messages went out (0 while stalled)."""
        messages = [_wire(m) for m in messages]
        return self._call(self._deliver(messages, feed, max(1, batch)), timeout)

    def send_raw(self, frame: bytes | str, *, feed: str | None = None) -> None:
        """Write ``frame`` as it is (bytes: a binary frame, str: a text frame) to every authenticated connection
        (on ``feed``), stalled or not."""
        async def write():
            for client in self._live(feed):
                async with client.lock:
                    await client.ws.send(frame)
        self._call(write())

    def send_error(self, code: int, *, feed: str | None = None) -> None:
        """Send an error frame (e.g. 407 slow client, 500) to every authenticated connection (on ``feed``),
        stalled or not."""
        async def write():
            for client in self._live(feed):
                await self._error(client, code)
        self._call(write())

    # --- faults ------------------------------------------------------------------------------------------

    def reject_next_auth(self, code: int = 402, times: int = 1) -> None:
        """Answer the next ``times`` auth messages with error ``code`` (402 auth failed, 406 connection limit
        ...) and close those connections."""
        with self._cond:
            self._auth_rejections.extend([code] * times)

    def reject_next_subscribe(self, code: int = 405, times: int = 1) -> None:
        """Answer the next ``times`` subscribe messages with error ``code`` and leave subscriptions as they were."""
        with self._cond:
            self._subscribe_rejections.extend([code] * times)

    def insufficient_subscription(self, feed: str, *, on: str = "auth") -> None:
        """The account may not use ``feed``: error 409 on auth, as Alpaca does (``on="subscribe"``: on
        every subscribe instead)."""
        if on not in ("auth", "subscribe"):
            raise ValueError(f"on must be 'auth' or 'subscribe', not {on!r}")
        with self._cond:
            self._unentitled[feed] = on

    def stall(self, seconds: float | None = None, *, pings: bool = True) -> None:
        """For ``seconds`` (None: until ``resume()``), send nothing: no data (dropped, as a real stall loses
        it), no ``connected``, no answers to auth or subscribe (answered after the stall). With
        ``pings=False`` the server also stops reading, so WebSocket pings go unanswered."""
        self._call(self._begin_stall(seconds, pings))

    def resume(self) -> None:
        """End a stall now."""
        self._call(self._end_stall())

    def drop_connections(self, feed: str | None = None) -> int:
        """Abort every open connection (on ``feed``) without a close handshake, like a network failure."""
        async def drop():
            clients = [c for c in self._clients if c.open and feed in (None, c.feed)]
            for client in clients:
                self._abort(client)
            return len(clients)
        return self._call(drop())

    # --- protocol ----------------------------------------------------------------------------------------

    def _check_path(self, connection: ServerConnection, request):
        if _feed_of(request.path) is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no stream at {request.path}\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        with self._cond:
            self.connections += 1
            feed = _feed_of(ws.request.path)
            channels = CRYPTO_CHANNELS if feed.startswith("crypto") else STOCK_CHANNELS
            client = _Client(self.connections, feed, ws, subscriptions={ch: set() for ch in channels})
            self._clients.append(client)
            self._cond.notify_all()
        if not self._flowing.is_set() and not self._stall_pings:
            ws.transport.pause_reading()
            self._paused.append(ws.transport)
        deadline = asyncio.get_running_loop().time() + self.auth_timeout
        try:
            await self._thaw(client)
            await self._control(client, {"T": "success", "msg": "connected"})
            while True:
                wait = None if client.authenticated else deadline - asyncio.get_running_loop().time()
                try:
                    raw = await asyncio.wait_for(ws.recv(), wait)
                except TimeoutError:
                    await self._error(client, 404)
                    break
                await self._thaw(client)
                if not await self._on_message(client, _decode(raw)):
                    break
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                self._clients.remove(client)
                self._cond.notify_all()
            await ws.close()

    async def _on_message(self, client: _Client, message) -> bool:
        """Answer one client message; False when the connection should close."""
        action = message.get("action") if isinstance(message, dict) else None
        if action == "auth":
            return await self._auth(client, message)
        if action in ("subscribe", "unsubscribe"):
            if not client.authenticated:
                await self._error(client, 401)
            else:
                await self._subscribe(client, message, add=action == "subscribe")
            return True
        await self._error(client, 400 if action is None else 410)
        return True

    async def _auth(self, client: _Client, message: dict) -> bool:
        if client.authenticated:
            await self._error(client, 403)
            return True
        with self._cond:
            same_feed = sum(c.authenticated and c.open for c in self._clients if c.feed == client.feed)
            if self._auth_rejections:
                code = self._auth_rejections.pop(0)
            elif (message.get("key"), message.get("secret")) != (self.key_id, self.secret_key):
                code = 402
            elif self._unentitled.get(client.feed) == "auth":
                code = 409
            elif self.connection_limit is not None and same_feed >= self.connection_limit:
                code = 406
            else:
                code = None
                client.authenticated = True
                self._cond.notify_all()
        if code is not None:
            await self._error(client, code)
            return False
        await self._control(client, {"T": "success", "msg": "authenticated"})
        return True

    async def _subscribe(self, client: _Client, message: dict, *, add: bool) -> None:
        channels = tuple(client.subscriptions)
        asked = {k: v for k, v in message.items() if k != "action"}
        if any(k not in channels or not isinstance(v, list) for k, v in asked.items()):
            await self._error(client, 410)
            return
        with self._cond:
            rejection = self._subscribe_rejections.pop(0) if self._subscribe_rejections else None
            if rejection is None and add and self._unentitled.get(client.feed) == "subscribe":
                rejection = 409
            new = {ch: set(client.subscriptions.get(ch, ())) for ch in channels}
            for channel, symbols in asked.items():
                new[channel] = new[channel] | set(symbols) if add else new[channel] - set(symbols)
                if channel == "trades" and "corrections" in channels:
                    # Alpaca adds trade corrections and cancels along with trades.
                    for extra in ("corrections", "cancelErrors"):
                        new[extra] = new[extra] | set(symbols) if add else new[extra] - set(symbols)
            if rejection is None and self.symbol_limit is not None and add:
                if len(set().union(*new.values()) - {"*"}) > self.symbol_limit:
                    rejection = 405
            if rejection is None:
                client.subscriptions = new
                self._cond.notify_all()
        if rejection is not None:
            await self._error(client, rejection)
            return
        await self._control(client, {"T": "subscription", **{ch: sorted(new[ch]) for ch in channels}})

    async def _deliver(self, messages: list[dict], feed: str | None, batch: int) -> int:
        if not self._flowing.is_set():
            return 0
        count = 0
        for client in self._live(feed):
            wanted = [m for m in messages if client.wants(m) and _routes_to(m, client.feed, feed)]
            for start in range(0, len(wanted), batch):
                chunk = wanted[start:start + batch]
                cut = None
                if self.drop_every:
                    cut = self.drop_every - client.delivered
                    chunk = chunk[:cut]
                if not client.open:
                    break
                try:
                    async with client.lock:
                        await client.ws.send(msgpack.packb(chunk))
                except ConnectionClosed:
                    break
                client.delivered += len(chunk)
                count += len(chunk)
                with self._cond:
                    self.sent.extend(Delivery(m["S"], _stamp(m.get("t")), m["T"], client.feed, client.number)
                                     for m in chunk)
                    self._cond.notify_all()
                if cut is not None and client.delivered >= self.drop_every:
                    self._abort(client)
                    break
        return count

    async def _control(self, client: _Client, message: dict) -> None:
        async with client.lock:
            await client.ws.send(msgpack.packb([message]))

    async def _error(self, client: _Client, code: int) -> None:
        with self._cond:
            self.errors_sent.append((client.feed, code))
            self._cond.notify_all()
        await self._control(client, {"T": "error", "code": code, "msg": ERRORS.get(code, "error")})

    def _abort(self, client: _Client) -> None:
        with self._cond:
            client.authenticated = False        # frees the feed's connection slot at once
            self._cond.notify_all()
        client.ws.transport.abort()

    async def _thaw(self, client: _Client) -> None:
        """Return when the server is not stalled; raise ConnectionClosed if the client left meanwhile."""
        while not self._flowing.is_set():
            flowing = asyncio.ensure_future(self._flowing.wait())
            closed = asyncio.ensure_future(client.ws.wait_closed())
            await asyncio.wait({flowing, closed}, return_when=asyncio.FIRST_COMPLETED)
            flowing.cancel()
            closed.cancel()
            if not client.open:
                raise ConnectionClosed(None, None)

    async def _begin_stall(self, seconds: float | None, pings: bool) -> None:
        self._flowing.clear()
        self._stall_pings = pings
        if not pings:
            for client in self._clients:
                client.ws.transport.pause_reading()
                self._paused.append(client.ws.transport)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        if seconds is not None:
            self._stall_timer = asyncio.get_running_loop().call_later(
                seconds, lambda: asyncio.ensure_future(self._end_stall()))

    async def _end_stall(self) -> None:
        for transport in self._paused:
            if not transport.is_closing():
                transport.resume_reading()
        self._paused.clear()
        self._flowing.set()

    async def _shutdown(self) -> None:
        await self._end_stall()
        self._server.close()
        await self._server.wait_closed()

    def _live(self, feed: str | None = None) -> list[_Client]:
        with self._cond:
            return [c for c in self._clients if c.open and c.authenticated and feed in (None, c.feed)]

    def _call(self, coroutine, timeout: float = 10.0):
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the stream server is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)


def bar_messages(bars, kind: str = "b") -> list[dict]:
    """Wire messages for ``bars`` (see ``AlpacaStreamServer.send_bars``), ``t`` still a ``pd.Timestamp``."""
    if kind not in ("b", "u", "d"):
        raise ValueError(f"kind must be 'b', 'u' or 'd', not {kind!r}")
    out = []
    if isinstance(bars, Mapping):
        for symbol, frame in bars.items():
            index = frame.index.tz_localize("UTC") if frame.index.tz is None else frame.index.tz_convert("UTC")
            crypto = "/" in symbol
            for t, row in zip(index, frame.itertuples()):
                volume = float(row.volume) if crypto else int(row.volume)
                vwap = getattr(row, "vwap", None)
                out.append({"T": kind, "S": symbol, "o": float(row.open), "h": float(row.high),
                            "l": float(row.low), "c": float(row.close), "v": volume, "t": t,
                            "n": int(getattr(row, "trade_count", 1)),
                            "vw": float(vwap) if vwap is not None else round((row.high + row.low + row.close) / 3, 4)})
        out.sort(key=lambda m: m["t"])          # a stable sort: time order across symbols
        return out
    for bar in bars:
        message = {"T": kind, "n": None, "vw": None}  # alpaca-py needs the n and vw keys, null or not
        message.update({_BAR_FIELDS.get(k, k): v for k, v in bar.items()})
        out.append(message)
    return out


def _feed_of(path: str) -> str | None:
    parts = path.split("?")[0].strip("/").split("/")
    if len(parts) == 2 and parts[0] == "v2" and parts[1]:
        return parts[1]                                     # iex, sip, delayed_sip, test...
    if len(parts) == 3 and parts[:2] == ["v1beta3", "crypto"] and parts[2]:
        return f"crypto/{parts[2]}"
    return None


def _routes_to(message: dict, client_feed: str, feed: str | None) -> bool:
    if feed is not None:
        return True
    return ("/" in str(message.get("S", ""))) == client_feed.startswith("crypto")


def _wire(message: dict) -> dict:
    message = dict(message)
    if isinstance(message.get("t"), datetime):
        t = pd.Timestamp(message["t"])
        t = t.tz_localize("UTC") if t.tz is None else t
        message["t"] = msgpack.Timestamp.from_unix_nano(t.value)
    return message


def _stamp(t) -> pd.Timestamp | None:
    return pd.Timestamp(t.to_unix_nano(), unit="ns", tz="UTC") if isinstance(t, msgpack.Timestamp) else None


def _decode(raw: bytes | str):
    # alpaca-py sends msgpack; other clients send JSON text. Anything else is answered with 400.
    try:
        return json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)
    except Exception:
        return None
