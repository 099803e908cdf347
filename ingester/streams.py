"""One Alpaca stream connection per feed, through alpaca-py's ``StockDataStream``/``CryptoDataStream``.

alpaca-py reconnects by itself (with backoff) after socket errors, auth failures and closes; this module
watches what it does and makes the cases that need a human loud:

- auth failed (402): alpaca-py keeps retrying with backoff; each failure is logged with what to check;
- connection limit (406): another connection already holds the feed for these keys — logged as such;
- insufficient subscription (409): fatal. alpaca-py's ``run()`` returns silently then; here any return of
  ``run()`` that was not asked for is fatal, with a message naming the feed and the plan it needs;
- frames that fail to decode are logged by alpaca-py and counted here; they are never fatal.

The hooks are alpaca-py 0.44's ``_start_ws`` and ``_dispatch`` (the version is pinned).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("ingester.streams")

PLANS = {"sip": "the SIP feed needs a paid market-data plan (Algo Trader Plus); the free Basic plan has IEX only "
                "— set FARM_INGEST_FEED=iex",
         "iex": "the account's plan does not include the IEX stream; check the data subscription on the "
                "Alpaca dashboard",
         "crypto": "the account's plan does not include the crypto stream; check the data subscription on the "
                   "Alpaca dashboard"}
_CHANNELS = {"bars": "subscribe_bars", "updated_bars": "subscribe_updated_bars",
             "daily_bars": "subscribe_daily_bars", "trades": "subscribe_trades"}
_ALPACA_LOGGER = "alpaca.data.live.websocket"


def classify(code: int | None, text: str) -> int | None:
    """Alpaca's error code for a stream error (alpaca-py passes on only the text of auth errors)."""
    text = (text or "").lower()
    if code:
        return int(code)
    if "insufficient subscription" in text:
        return 409
    if "connection limit" in text:
        return 406
    if "auth" in text:
        return 402
    if "symbol limit" in text:
        return 405
    return None


class FeedConnection:
    """The stream of one feed (``stocks`` or ``crypto``) for ``symbols`` on ``channels``.

    ``on_data(conn, msg)`` gets every data message (a dict, timestamps as msgpack Timestamps) on the
    stream's thread; ``on_event(conn, kind, detail)`` gets connected/subscribed/disconnected/error/fatal.
    """

    def __init__(self, feed: str, symbols: tuple[str, ...], channels: tuple[str, ...], *, key: str, secret: str,
                 stock_feed: str = "iex", url: str | None = None,
                 on_data: Callable[["FeedConnection", dict], None],
                 on_event: Callable[["FeedConnection", str, str], None] | None = None,
                 reconnect_min_seconds: float = 1.0, reconnect_max_seconds: float = 30.0):
        self.feed, self.symbols, self.channels = feed, symbols, channels
        self.plan_feed = stock_feed if feed == "stocks" else "crypto"
        self.name = f"{feed}:{self.plan_feed}" if feed == "stocks" else "crypto"
        self.on_data, self.on_event = on_data, on_event or (lambda *_: None)
        self.connected_at: float | None = None
        self.last_message_at: float | None = None
        self.subscribed = False
        self.connections = 0
        self.fatal: str | None = None
        self.last_error: str | None = None
        self._stopping = False
        self._done = threading.Event()
        self.stream = self._make_stream(key, secret, stock_feed, url)
        self.stream._reconnect_min_backoff = reconnect_min_seconds
        self.stream._reconnect_max_backoff = reconnect_max_seconds
        for channel in channels:
            getattr(self.stream, _CHANNELS[channel])(self._handler, *symbols)
        self._thread = threading.Thread(target=self._run, name=f"feed-{feed}", daemon=True)

    @property
    def connected(self) -> bool:
        return self.connected_at is not None

    def _make_stream(self, key: str, secret: str, stock_feed: str, url: str | None):
        from alpaca.data.enums import DataFeed
        from alpaca.data.live import CryptoDataStream, StockDataStream

        conn = self

        def observed(base):
            class Observed(base):
                async def _start_ws(self):
                    try:
                        await super()._start_ws()
                    except ValueError as exc:
                        conn._refused(str(exc))
                        raise
                    conn._connected()

                async def _dispatch(self, msg):
                    kind = msg.get("T")
                    if kind == "subscription":
                        conn._subscribed(msg)
                    elif kind == "error":
                        conn._error(msg.get("code"), str(msg.get("msg", "")))
                    await super()._dispatch(msg)

                async def close(self):
                    conn._disconnected()
                    await super().close()

            return Observed

        params = {"ping_interval": 10, "ping_timeout": 60, "max_queue": 4096, "close_timeout": 1}
        base = (url or "wss://stream.data.alpaca.markets").rstrip("/")
        if self.feed == "crypto":
            return observed(CryptoDataStream)(key or "", secret or "", raw_data=True, websocket_params=params,
                                              url_override=f"{base}/v1beta3/crypto/us")
        return observed(StockDataStream)(key, secret, raw_data=True, feed=DataFeed(stock_feed),
                                         websocket_params=params, url_override=f"{base}/v2/{stock_feed}")

    async def _handler(self, msg: dict) -> None:
        self.last_message_at = time.monotonic()
        self.on_data(self, msg)

    # -- what alpaca-py reports (on the stream's thread) ------------------------------------------------

    def _connected(self) -> None:
        self.connected_at = time.monotonic()
        self.connections += 1
        self.on_event(self, "connected", f"connection {self.connections}")

    def _subscribed(self, msg: dict) -> None:
        self.subscribed = True
        counts = {k: len(v) for k, v in msg.items() if isinstance(v, list) and v}
        self.on_event(self, "subscribed", ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))

    def _disconnected(self) -> None:
        if self.connected_at is not None:
            self.connected_at = None
            self.subscribed = False
            self.on_event(self, "disconnected", "")

    def _refused(self, text: str) -> None:
        self._error(None, text)

    def _error(self, code, text: str) -> None:
        code = classify(code, text)
        self.last_error = f"{text} ({code})" if code else text
        if code == 409:
            self.fatal = (f"Alpaca refused the {self.name} stream: insufficient subscription (409); "
                          f"{PLANS[self.plan_feed]}")
            self.on_event(self, "fatal", self.fatal)
            self._stopping = True
            if self.stream._loop is not None and self.stream._loop.is_running():
                asyncio.ensure_future(self.stream.stop_ws(), loop=self.stream._loop)
                asyncio.ensure_future(self.stream.close(), loop=self.stream._loop)
            return
        detail = {402: f"authentication failed on the {self.name} stream; check APCA_API_KEY_ID and "
                       "APCA_API_SECRET_KEY (paper and live keys differ); alpaca-py retries with backoff",
                  406: f"connection limit exceeded (406): another connection already holds the {self.name} "
                       "stream for these keys (another ingester replica, a notebook, a second deployment?). "
                       "Alpaca allows one per feed per account; stop the other one or shard by feed "
                       "(FARM_INGEST_SHARD_BY=feed); retrying with backoff",
                  405: f"symbol limit exceeded (405) on the {self.name} stream: the plan allows fewer symbols "
                       "(free plan: 30); subscribe fewer or shard them over accounts",
                  }.get(code, f"the {self.name} stream reported an error: {self.last_error}")
        self.on_event(self, "error", detail)

    # -- running --------------------------------------------------------------------------------------

    def start(self) -> "FeedConnection":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.stream.run()
        except BaseException as exc:  # noqa: BLE001 - reported as fatal below
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.connected_at, self.subscribed = None, False
            if not self._stopping and self.fatal is None:
                self.fatal = (f"the {self.name} stream stopped by itself (alpaca-py's run() returned; last error: "
                              f"{self.last_error or 'none'}); if it says 'insufficient subscription': "
                              f"{PLANS[self.plan_feed]}")
            if self.fatal:
                self.on_event(self, "fatal", self.fatal)
            self._done.set()

    def reconnect(self, reason: str) -> None:
        """Drop the socket; alpaca-py connects again (with its backoff) and re-subscribes."""
        loop = self.stream._loop
        log.warning("%s: %s; reconnecting", self.name, reason)
        self.on_event(self, "reconnect", reason)
        self.last_message_at = None
        self.connected_at = None
        if loop is not None and loop.is_running():
            async def drop():
                ws = self.stream._ws
                if ws is not None and ws.transport is not None:
                    ws.transport.abort()      # no closing handshake: a stalled server may never answer it
            asyncio.run_coroutine_threadsafe(drop(), loop)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        loop = self.stream._loop
        for step in (self.stream.stop_ws, self.stream.close):
            if loop is None or not loop.is_running() or self._done.is_set():
                break
            coroutine = step()
            try:
                asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)
            except Exception:  # noqa: BLE001 - the loop may end while we ask
                coroutine.close()   # never run: say so, instead of a "never awaited" warning
        self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class FrameErrorCounter(logging.Handler):
    """Counts the frames alpaca-py could not decode or dispatch ("error during websocket communication"),
    per feed thread, and says in our log what happened to the data."""

    def __init__(self, count: Callable[[str], bool]):
        super().__init__(logging.ERROR)
        self.count = count

    def emit(self, record: logging.LogRecord) -> None:
        if "error during websocket communication" in record.getMessage() and record.threadName.startswith("feed-"):
            feed = record.threadName[5:]
            if self.count(feed):
                log.warning("%s: a frame could not be read and was skipped (the messages in it are lost; the gap "
                            "is backfilled when the next bar shows it)", feed)

    def install(self) -> "FrameErrorCounter":
        logging.getLogger(_ALPACA_LOGGER).addHandler(self)
        return self

    def remove(self) -> None:
        logging.getLogger(_ALPACA_LOGGER).removeHandler(self)
