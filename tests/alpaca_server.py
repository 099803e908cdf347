"""A local server that speaks Alpaca's REST market-data protocol, so tests can drive the real alpaca-py client.

It serves bars the test hands it, checks the key headers like Alpaca does, pages with a small page size so
that ``next_page_token`` is exercised, and logs every request. More endpoints plug in through ``routes``.

    with AlpacaServer(stock_bars={"AAPL": frame}, page_size=50) as server:
        fk.data.alpaca("AAPL", start=..., url_override=server.url, environ=server.environ)
        server.requests_to("/v2/stocks/bars")      # what the client asked for, page by page
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

STOCK_FEEDS = ("iex", "sip", "delayed_sip", "otc", "boats", "overnight")
_TIMEFRAME = re.compile(r"^([1-9]\d*)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: object = None


Reply = tuple[int, object]                  # (HTTP status, JSON-serialisable body)
Route = Callable[[RecordedRequest], Reply]


@dataclass
class AlpacaServer:
    """Alpaca's REST data API on ``127.0.0.1``, free port; alpaca-py takes ``url`` as its ``url_override``.

    ``stock_bars`` and ``crypto_bars`` map a symbol to a DataFrame with a tz-aware DatetimeIndex and
    ``open high low close volume`` columns (optional ``trade_count`` and ``vwap``).
    """

    stock_bars: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    crypto_bars: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    key_id: str = "test-key-id"
    secret_key: str = "test-secret-key"
    page_size: int = 100
    requests: list[RecordedRequest] = field(default_factory=list, init=False)
    routes: dict[tuple[str, str], Route] = field(default_factory=dict, init=False)

    def __post_init__(self):
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.routes[("GET", "/v2/stocks/bars")] = self._stock_bars
        self.routes[("GET", "/v1beta3/crypto/us/bars")] = self._crypto_bars

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> "AlpacaServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        # A short poll interval makes stop() quick, which matters when every test module starts a server.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="alpaca-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "AlpacaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def environ(self) -> dict[str, str]:
        """Environment variables with the keys this server accepts."""
        return {"APCA_API_KEY_ID": self.key_id, "APCA_API_SECRET_KEY": self.secret_key}

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # --- protocol --------------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
        route = self.routes.get((request.method, request.path))
        if route is None:
            return 404, {"code": 40410000, "message": f"endpoint not found: {request.method} {request.path}"}
        return route(request)

    def authenticate(self, request: RecordedRequest, *, required: bool = True) -> Reply | None:
        """An error reply for missing (401) or wrong (403) keys, or None when the request may go on."""
        key, secret = request.headers.get("apca-api-key-id"), request.headers.get("apca-api-secret-key")
        if key is None and secret is None and not required:
            return None
        if not key or not secret:
            return 401, {"code": 40110000, "message": "request is not authorized"}
        if (key, secret) != (self.key_id, self.secret_key):
            return 403, {"code": 40310000, "message": "forbidden: invalid API key or secret"}
        return None

    def _stock_bars(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        if request.query.get("feed", "sip") not in STOCK_FEEDS:
            return 400, {"code": 40010001, "message": f"invalid feed: {request.query['feed']}"}
        return self._bars(request, self.stock_bars, integer_volume=True)

    def _crypto_bars(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request, required=False)
        return denied or self._bars(request, self.crypto_bars, integer_volume=False)

    def _bars(self, request: RecordedRequest, data: Mapping[str, pd.DataFrame], *, integer_volume: bool) -> Reply:
        q = request.query
        symbols = [s for s in q.get("symbols", "").split(",") if s]
        if not symbols:
            return 400, {"code": 40010001, "message": "missing symbols"}
        if not _TIMEFRAME.match(q.get("timeframe", "")):
            return 400, {"code": 40010001, "message": f"invalid timeframe: {q.get('timeframe')!r}"}
        try:
            start, end = (_utc(q[k]) if k in q else None for k in ("start", "end"))
            limit = int(q.get("limit", "1000"))
            offset = int(base64.urlsafe_b64decode(q["page_token"]).decode()) if "page_token" in q else 0
        except ValueError as exc:
            return 400, {"code": 40010001, "message": f"invalid query: {exc}"}
        if not 1 <= limit <= 10_000:
            return 400, {"code": 40010001, "message": "invalid limit: must be between 1 and 10000"}

        # Alpaca orders a multi-symbol answer by symbol, then time, and pages across the whole sequence.
        rows = []
        for symbol in sorted(set(symbols)):
            frame = data.get(symbol)
            if frame is None:
                continue
            index = frame.index.tz_convert("UTC")
            keep = np.ones(len(index), dtype=bool)
            if start is not None:
                keep &= index >= start
            if end is not None:
                keep &= index <= end
            rows.extend((symbol, t, bar) for t, bar in zip(index[keep], frame[keep].itertuples()))
        page = rows[offset:offset + min(limit, self.page_size)]
        bars: dict[str, list] = {}
        for symbol, t, bar in page:
            bars.setdefault(symbol, []).append(_bar_json(t, bar, integer_volume))
        more = offset + len(page) < len(rows)
        token = base64.urlsafe_b64encode(str(offset + len(page)).encode()).decode() if more else None
        return 200, {"bars": bars, "next_page_token": token}


def _utc(text: str) -> pd.Timestamp:
    # RFC 3339 with an offset, or a bare date (which Alpaca reads as UTC).
    stamp = pd.Timestamp(text)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def _bar_json(t: pd.Timestamp, bar, integer_volume: bool) -> dict:
    volume = bar.volume
    if integer_volume and float(volume).is_integer():
        volume = int(volume)
    vwap = getattr(bar, "vwap", None)
    return {
        "t": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "o": float(bar.open), "h": float(bar.high), "l": float(bar.low), "c": float(bar.close),
        "v": volume,
        # alpaca-py requires the n and vw keys on every bar.
        "n": int(getattr(bar, "trade_count", 1)),
        "vw": float(vwap) if vwap is not None else round((bar.high + bar.low + bar.close) / 3, 4),
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"           # keep-alive, as alpaca-py's requests.Session expects
    timeout = 10                            # idle keep-alive connections do not outlive a test run

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = RecordedRequest(method=self.command, path=parts.path, query=dict(parse_qsl(parts.query)),
                                  headers={k.lower(): v for k, v in self.headers.items()}, body=body)
        try:
            status, reply = self.server.app.handle(request)
        except Exception as exc:  # a bug in a route must show up in the test, not hang the client
            status, reply = 500, {"code": 50010000, "message": f"test server error: {exc!r}"}
        payload = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format, *args) -> None:
        pass
