"""A local server that speaks Alpaca's REST protocol, so tests can drive the real alpaca-py client.

Market data: it serves bars the test hands it, checks the key headers like Alpaca does, pages with a small
page size so that ``next_page_token`` is exercised, and logs every request.

News: ``GET /v1beta1/news`` over the items in ``news`` (build them with :func:`news_item`; ``add_news`` and
``update_news`` change them while a test runs), filtered and sorted on ``updated_at`` and paged with a cursor
token, so items appended between pages are neither skipped nor repeated. With no ``start`` every item counts.

Paper trading: orders, account, positions and clock, with a fill model the test controls. Market orders
fill at once at ``prices[symbol]`` when ``auto_fill`` is on (limit orders when marketable); otherwise
orders rest until ``fill(order_id, qty, price)`` (say, while the client's process is down; ``open_orders(prefix)``
lists what rests). ``place(symbol, side, qty)`` trades the account as the dashboard would, with an id of
Alpaca's own. ``GET /v2/orders`` filters on ``status``, ``after``/``until`` (submission time), ``symbols``,
``side``, ``direction`` and ``limit``, as Alpaca does. ``fail_next(path, status)`` makes the next request(s)
fail, before or ``after`` the server acted on them (a lost response), or answer only after ``delay``.
More endpoints plug in through ``routes``; ``{id}`` in a route's path matches one path segment.
``rate_limit`` requests per ``rate_window`` seconds (Alpaca: 200 a minute) answer 429 with ``Retry-After`` beyond.

    with AlpacaServer(stock_bars={"AAPL": frame}, page_size=50) as server:
        fk.data.alpaca("AAPL", start=..., url_override=server.url, environ=server.environ)
        server.requests_to("/v2/stocks/bars")      # what the client asked for, page by page

    with AlpacaServer(news=[news_item(1, "AAPL beats", ["AAPL"], "2024-01-02T14:00:00Z")], page_size=10) as server:
        NewsClient(server.key_id, server.secret_key, url_override=server.url).get_news(NewsRequest(symbols="AAPL"))
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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


Reply = tuple[int, object]                  # (HTTP status, JSON-serialisable body; None for no body)
                                            # or (status, body, extra headers)
Route = Callable[[RecordedRequest], Reply]
ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
TIMES_IN_FORCE = ("day", "gtc", "opg", "cls", "ioc", "fok")
OPEN_STATUSES = ("new", "accepted", "pending_new", "partially_filled", "pending_cancel", "held")


@dataclass
class Failure:
    """An injected failure: the next ``times`` requests to (``method``, ``path``) answer ``status``."""

    path: str
    status: int | None = 504                # None: answer normally (with ``delay``)
    method: str | None = None               # None: any method
    times: int = 1
    after: bool = False                     # act on the request first, then lose the answer
    delay: float = 0.0                      # seconds to wait before answering


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
    cash: float = 100_000.0
    prices: dict[str, float] = field(default_factory=dict)
    auto_fill: bool = True
    market_open: bool = True
    news: list[dict] = field(default_factory=list)
    rate_limit: int | None = None
    rate_window: float = 60.0
    requests: list[RecordedRequest] = field(default_factory=list, init=False)
    routes: dict[tuple[str, str], Route] = field(default_factory=dict, init=False)
    orders: dict[str, dict] = field(default_factory=dict, init=False)       # Alpaca order id → order JSON
    positions: dict[str, dict] = field(default_factory=dict, init=False)    # symbol → {"qty", "avg"}

    def __post_init__(self):
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._failures: list[Failure] = []
        self._spent = 0.0                   # net cash paid for fills
        self._recent: list[float] = []      # monotonic times of the requests inside the rate window
        self.account_id = str(uuid.uuid4())
        self.routes[("GET", "/v2/stocks/bars")] = self._stock_bars
        self.routes[("GET", "/v1beta3/crypto/us/bars")] = self._crypto_bars
        self.routes[("GET", "/v1beta1/news")] = self._news
        self.routes.update({
            ("POST", "/v2/orders"): self._post_order, ("GET", "/v2/orders"): self._list_orders,
            ("GET", "/v2/orders/{id}"): self._get_order, ("DELETE", "/v2/orders/{id}"): self._cancel_order,
            ("GET", "/v2/orders:by_client_order_id"): self._order_by_client_id,
            ("GET", "/v2/account"): self._account, ("GET", "/v2/positions"): self._positions,
            ("GET", "/v2/clock"): self._clock,
        })

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
        """Forget requests, orders, positions and pending failures; cash goes back to ``cash``."""
        with self._lock:
            self.requests.clear()
            self.orders.clear()
            self.positions.clear()
            self._failures.clear()
            self._recent.clear()
            self._spent = 0.0

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # --- protocol --------------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            limited = self._rate_limited()
            if limited is not None:
                return limited
            failure = next((f for f in self._failures if f.path == request.path
                            and f.method in (None, request.method)), None)
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
        route = self.routes.get((request.method, request.path))
        if route is None and "/" in request.path.strip("/"):
            route = self.routes.get((request.method, request.path.rsplit("/", 1)[0] + "/{id}"))
        if failure is not None and not failure.after and failure.status is not None:
            return failure.status, {"code": failure.status * 100_000, "message": "injected failure"}
        if route is None:
            return 404, {"code": 40410000, "message": f"endpoint not found: {request.method} {request.path}"}
        reply = route(request)
        if failure is not None:
            time.sleep(failure.delay)
            if failure.status is not None:
                return failure.status, {"code": failure.status * 100_000, "message": "injected failure"}
        return reply

    def _rate_limited(self) -> Reply | None:
        if self.rate_limit is None:
            return None
        now = time.monotonic()
        self._recent = [t for t in self._recent if t > now - self.rate_window]
        if len(self._recent) < self.rate_limit:
            self._recent.append(now)
            return None
        wait = max(1, math.ceil(self._recent[0] + self.rate_window - now))
        return 429, {"code": 42910000, "message": "too many requests."}, {
            "Retry-After": str(wait), "X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + wait)}

    def fail_next(self, path: str, status: int | None = 504, *, method: str | None = None, times: int = 1,
                  after: bool = False, delay: float = 0.0) -> None:
        """Make the next ``times`` requests to ``path`` fail with ``status`` (see :class:`Failure`)."""
        with self._lock:
            self._failures.append(Failure(path, status, method, times, after, delay))

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

    # --- news ------------------------------------------------------------------------------------------------

    def add_news(self, *items: dict) -> None:
        """Publish more news items (see :func:`news_item`)."""
        with self._lock:
            self.news.extend(items)

    def update_news(self, news_id: int, updated_at=None, **changes) -> dict:
        """Edit an item as a publisher would: apply ``changes`` and move ``updated_at`` (default: now)."""
        with self._lock:
            item = next((n for n in self.news if n["id"] == news_id), None)
            if item is None:
                raise KeyError(f"no news item with id {news_id}")
            item.update(changes, updated_at=_rfc3339(updated_at if updated_at is not None else _now()))
            return dict(item)

    def _news(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        q = request.query
        try:
            start, end = (_utc(q[k]) if q.get(k) else None for k in ("start", "end"))
            limit = int(q.get("limit", "10"))
            after = _news_cursor(q["page_token"]) if q.get("page_token") else None
        except (ValueError, TypeError) as exc:
            return 400, {"code": 40010001, "message": f"invalid query: {exc}"}
        if not 1 <= limit <= 50:
            return 400, {"code": 40010001, "message": "invalid limit: must be between 1 and 50"}
        sort = q.get("sort", "desc").lower()
        if sort not in ("asc", "desc"):
            return 400, {"code": 40010001, "message": f"invalid sort: {q['sort']!r}"}
        descending = sort == "desc"
        symbols = set(filter(None, q.get("symbols", "").split(",")))
        with_content = q.get("include_content", "false").lower() == "true"
        skip_contentless = q.get("exclude_contentless", "false").lower() == "true"

        def key(item):
            return _utc(item["updated_at"]).value, int(item["id"])

        with self._lock:
            rows = [dict(n) for n in self.news
                    if (not symbols or symbols & set(n.get("symbols", ())))
                    and (start is None or _utc(n["updated_at"]) >= start)
                    and (end is None or _utc(n["updated_at"]) <= end)
                    and (not skip_contentless or n.get("content"))]
        rows.sort(key=key, reverse=descending)
        if after is not None:
            rows = [n for n in rows if (key(n) < after if descending else key(n) > after)]
        page = rows[:min(limit, self.page_size)]
        token = None
        if len(rows) > len(page):
            token = base64.urlsafe_b64encode("{}:{}".format(*key(page[-1])).encode()).decode()
        for item in page:
            item.update(created_at=_rfc3339(item["created_at"]), updated_at=_rfc3339(item["updated_at"]))
            if not with_content:
                item["content"] = ""
        return 200, {"news": page, "next_page_token": token}

    # --- paper trading ------------------------------------------------------------------------------------

    def fill(self, order_id: str, qty: float | None = None, price: float | None = None) -> dict:
        """Fill ``qty`` (default: what remains) of an open order at ``price`` (default: ``prices[symbol]``)."""
        with self._lock:
            order = self.orders[order_id]
            if order["status"] not in OPEN_STATUSES:
                raise ValueError(f"order {order_id} is {order['status']}, not open")
            done, total = float(order["filled_qty"]), float(order["qty"])
            qty = total - done if qty is None else float(qty)
            if not 0 < qty <= total - done:
                raise ValueError(f"cannot fill {qty} of {order_id}: {total - done} remain")
            price = float(price if price is not None else self.prices.get(order["symbol"]) or order["limit_price"])
            avg = float(order["filled_avg_price"] or 0.0)
            now = _now()
            order.update(filled_qty=_num(done + qty), filled_avg_price=_num((avg * done + price * qty) / (done + qty)),
                         status="filled" if done + qty >= total else "partially_filled", updated_at=now,
                         filled_at=now if done + qty >= total else None)
            signed = qty if order["side"] == "buy" else -qty
            self._spent += signed * price
            pos = self.positions.setdefault(order["symbol"], {"qty": 0.0, "avg": 0.0})
            new = pos["qty"] + signed
            if pos["qty"] == 0 or (pos["qty"] > 0) != (new > 0) and new != 0:
                pos["avg"] = price                                  # opened, or flipped side
            elif abs(new) > abs(pos["qty"]):
                pos["avg"] = (pos["avg"] * pos["qty"] + price * signed) / new
            pos["qty"] = new
            if new == 0:
                del self.positions[order["symbol"]]
            return dict(order)

    def set_status(self, order_id: str, status: str) -> dict:
        """Move an order to ``status`` (``expired``, ``rejected``, ``canceled``, ...) as Alpaca would."""
        with self._lock:
            order = self.orders[order_id]
            stamp = {"expired": "expired_at", "canceled": "canceled_at", "rejected": "failed_at"}.get(status)
            order.update(status=status, updated_at=_now(), **({stamp: _now()} if stamp else {}))
            return dict(order)

    def order_by_client_id(self, cid: str) -> dict | None:
        with self._lock:
            return next((dict(o) for o in self.orders.values() if o["client_order_id"] == cid), None)

    def place(self, symbol: str, side: str, qty: float, *, client_order_id: str | None = None, kind: str = "market",
              limit_price: float | None = None, stop_price: float | None = None,
              time_in_force: str = "day") -> dict:
        """Put an order on the account as Alpaca's dashboard would (no client_order_id: Alpaca makes a UUID);
        it rests until :meth:`fill`."""
        with self._lock:
            now = _now()
            order = {
                "id": str(uuid.uuid4()), "client_order_id": client_order_id or str(uuid.uuid4()), "created_at": now,
                "updated_at": now, "submitted_at": now, "filled_at": None, "expired_at": None, "expires_at": None,
                "canceled_at": None, "failed_at": None, "replaced_at": None, "replaced_by": None, "replaces": None,
                "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, symbol)), "symbol": symbol,
                "asset_class": "crypto" if "/" in symbol else "us_equity", "notional": None,
                "qty": _num(qty) if not isinstance(qty, str) else qty, "filled_qty": "0", "filled_avg_price": None,
                "order_class": "simple", "order_type": kind, "type": kind, "side": side, "position_intent": None,
                "time_in_force": time_in_force, "limit_price": limit_price, "stop_price": stop_price,
                "status": "new", "extended_hours": False, "legs": None,
                "trail_percent": None, "trail_price": None, "hwm": None,
            }
            self.orders[order["id"]] = order
            return dict(order)

    def open_orders(self, prefix: str = "") -> list[dict]:
        """The open orders whose client_order_id starts with ``prefix``, oldest first."""
        with self._lock:
            return sorted((dict(o) for o in self.orders.values() if o["status"] in OPEN_STATUSES
                           and o["client_order_id"].startswith(prefix)), key=lambda o: o["submitted_at"])

    def cash_now(self) -> float:
        """The account's cash: ``cash`` less what its fills cost."""
        with self._lock:
            return self._cash_now()

    def _post_order(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        body = request.body if isinstance(request.body, dict) else {}
        problem = _order_problem(body)
        if problem:
            return 422, {"code": 40010001, "message": problem}
        with self._lock:
            cid = body.get("client_order_id") or str(uuid.uuid4())
            if self.order_by_client_id(cid) is not None:
                return 422, {"code": 40010001, "message": "client_order_id must be unique"}
            symbol, kind, qty = body["symbol"], body["type"], float(body["qty"])
            market = self.prices.get(symbol)
            estimate = float(body.get("limit_price") or body.get("stop_price") or market or 0.0)
            if body["side"] == "buy" and qty * estimate > self._cash_now():
                return 403, {"code": 40310000, "message": "insufficient buying power"}
            order = self.place(symbol, body["side"], body["qty"], client_order_id=cid, kind=kind,
                               limit_price=body.get("limit_price"), stop_price=body.get("stop_price"),
                               time_in_force=body["time_in_force"])
            order = self.orders[order["id"]]
            order["extended_hours"] = bool(body.get("extended_hours", False))
            limit = float(body["limit_price"]) if body.get("limit_price") else None
            marketable = market is not None and (
                kind == "market" or kind == "limit" and (market <= limit if body["side"] == "buy" else market >= limit))
            if self.auto_fill and marketable:
                self.fill(order["id"], price=market)
            return 200, dict(order)

    def _list_orders(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        q = request.query
        wanted = q.get("status", "open")
        if wanted not in ("open", "closed", "all"):
            return 422, {"code": 40010001, "message": f"invalid status: {wanted}"}
        try:
            limit = int(q.get("limit", "50"))
            after, until = (_utc(q[k]) if k in q else None for k in ("after", "until"))
        except ValueError as exc:
            return 422, {"code": 40010001, "message": f"invalid query: {exc}"}
        if not 1 <= limit <= 500:
            return 422, {"code": 40010001, "message": "limit must be between 1 and 500"}
        symbols = set(filter(None, q.get("symbols", "").split(",")))
        side = q.get("side")
        if side not in (None, "buy", "sell"):
            return 422, {"code": 40010001, "message": f"invalid side: {side}"}
        with self._lock:
            rows = [dict(o) for o in self.orders.values()
                    if (wanted == "all" or (o["status"] in OPEN_STATUSES) == (wanted == "open"))
                    and (after is None or _utc(o["submitted_at"]) > after)
                    and (until is None or _utc(o["submitted_at"]) <= until)
                    and (not symbols or o["symbol"] in symbols) and side in (None, o["side"])]
        rows.sort(key=lambda o: o["submitted_at"], reverse=q.get("direction", "desc") == "desc")
        return 200, rows[:limit]

    def _get_order(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        with self._lock:
            order = self.orders.get(request.path.rsplit("/", 1)[1])
            return (200, dict(order)) if order else (404, {"code": 40410000, "message": "order not found"})

    def _order_by_client_id(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        order = self.order_by_client_id(request.query.get("client_order_id", ""))
        return (200, order) if order else (404, {"code": 40410000, "message": "order not found"})

    def _cancel_order(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        with self._lock:
            order = self.orders.get(request.path.rsplit("/", 1)[1])
            if order is None:
                return 404, {"code": 40410000, "message": "order not found"}
            if order["status"] not in OPEN_STATUSES:
                return 422, {"code": 42210000, "message": f"order is not cancelable (status {order['status']})"}
            self.set_status(order["id"], "canceled")
            return 204, None

    def _cash_now(self) -> float:
        return self.cash - self._spent

    def _account(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        with self._lock:
            cash = self._cash_now()
            long_value = sum(p["qty"] * self.prices.get(s, p["avg"]) for s, p in self.positions.items() if p["qty"] > 0)
            short_value = sum(p["qty"] * self.prices.get(s, p["avg"]) for s, p in self.positions.items() if p["qty"] < 0)
        equity = cash + long_value + short_value
        return 200, {"id": self.account_id, "account_number": "PA0TESTFARM", "status": "ACTIVE",
                     "crypto_status": "ACTIVE", "currency": "USD", "cash": _num(cash), "buying_power": _num(cash),
                     "portfolio_value": _num(equity), "equity": _num(equity), "last_equity": _num(self.cash),
                     "long_market_value": _num(long_value), "short_market_value": _num(short_value),
                     "pattern_day_trader": False, "trading_blocked": False, "transfers_blocked": False,
                     "account_blocked": False, "shorting_enabled": True, "multiplier": "1", "daytrade_count": 0,
                     "created_at": "2024-01-02T00:00:00Z"}

    def _positions(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        with self._lock:
            rows = []
            for symbol, p in sorted(self.positions.items()):
                price = self.prices.get(symbol, p["avg"])
                # Alpaca names a crypto position without the slash its orders have (BTCUSD for BTC/USD).
                rows.append({"asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, symbol)), "symbol": symbol.replace("/", ""),
                             "exchange": "CRYPTO" if "/" in symbol else "NASDAQ",
                             "asset_class": "crypto" if "/" in symbol else "us_equity",
                             "avg_entry_price": _num(p["avg"]), "qty": _num(p["qty"]),
                             "side": "long" if p["qty"] > 0 else "short", "cost_basis": _num(p["qty"] * p["avg"]),
                             "market_value": _num(p["qty"] * price), "current_price": _num(price),
                             "unrealized_pl": _num(p["qty"] * (price - p["avg"]))})
        return 200, rows

    def _clock(self, request: RecordedRequest) -> Reply:
        denied = self.authenticate(request)
        if denied:
            return denied
        now = datetime.now(timezone.utc)
        return 200, {"timestamp": _now(), "is_open": self.market_open,
                     "next_open": (now + timedelta(hours=1 if not self.market_open else 18)).isoformat(),
                     "next_close": (now + timedelta(hours=6)).isoformat()}


def _order_problem(body: dict) -> str | None:
    """What Alpaca would refuse in an order body, or None."""
    if not isinstance(body.get("symbol"), str) or not body["symbol"]:
        return "symbol is required"
    try:
        qty = float(body.get("qty"))
    except (TypeError, ValueError):
        return "qty is required" if body.get("notional") is None else "notional orders are not supported here"
    if qty <= 0:
        return "qty must be > 0"
    if body.get("side") not in ("buy", "sell"):
        return f"invalid side: {body.get('side')!r}"
    if body.get("type") not in ORDER_TYPES:
        return f"invalid order type: {body.get('type')!r}"
    if body.get("time_in_force") not in TIMES_IN_FORCE:
        return f"invalid time_in_force: {body.get('time_in_force')!r}"
    if body["type"] in ("limit", "stop_limit") and body.get("limit_price") is None:
        return "limit_price is required for limit orders"
    if body["type"] in ("stop", "stop_limit") and body.get("stop_price") is None:
        return "stop_price is required for stop orders"
    if len(str(body.get("client_order_id") or "")) > 48:
        return "client_order_id must be 48 characters or fewer"
    return None


def news_item(news_id: int, headline: str = "", symbols=(), created_at=None, updated_at=None, **fields) -> dict:
    """A complete news item as Alpaca serves it; ``created_at`` defaults to now, ``updated_at`` to ``created_at``.

        news_item(7, "AAPL beats", ["AAPL"], "2024-01-02T14:00:00Z", content="<p>...</p>")
    """
    created = _rfc3339(created_at if created_at is not None else _now())
    item = {"id": int(news_id), "headline": headline or f"headline {news_id}", "summary": "", "author": "Test Wire",
            "created_at": created, "updated_at": _rfc3339(updated_at) if updated_at is not None else created,
            "url": f"https://news.example/{news_id}", "symbols": list(symbols), "source": "benzinga",
            "content": f"<p>story {news_id}</p>", "images": []}
    item.update(fields)
    return item


def _news_cursor(token: str) -> tuple[int, int]:
    stamp, news_id = base64.urlsafe_b64decode(token.encode()).decode().split(":")
    return int(stamp), int(news_id)


def _rfc3339(value) -> str:
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")        # Alpaca's news times have whole seconds


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(value: float) -> str:
    # Alpaca sends amounts as decimal strings.
    return format(round(float(value), 9), "f").rstrip("0").rstrip(".") or "0"


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
    disable_nagle_algorithm = True          # headers and body go out as separate writes: no 40 ms stall

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
            status, reply, *extra = self.server.app.handle(request)
        except Exception as exc:  # a bug in a route must show up in the test, not hang the client
            status, reply, extra = 500, {"code": 50010000, "message": f"test server error: {exc!r}"}, []
        payload = b"" if reply is None else json.dumps(reply).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (extra[0] if extra else {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True    # the client gave up waiting (a timeout test): nobody to answer

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format, *args) -> None:
        pass
