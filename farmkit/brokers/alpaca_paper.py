"""Alpaca paper trading as a backtrader broker, through alpaca-py's ``TradingClient``.

    broker = AlpacaPaperBroker.from_env("paper-aapl-1")   # keys from APCA_API_KEY_ID / APCA_API_SECRET_KEY
    cerebro.setbroker(broker)

Each order carries ``client_order_id(run_id, n)`` (n counts the run's orders), and the broker looks that
id up before it posts: a retried submit, or a restarted process submitting again, adopts the order Alpaca
already has instead of placing a second one. Fills, cancels and rejections come from polling Alpaca in
``next()`` (at most every ``poll_interval`` seconds) and reach the strategy as backtrader notifications.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import timedelta, timezone
from types import SimpleNamespace
from urllib.parse import urlparse

import backtrader as bt

from farmkit.errors import AlpacaAPIError, ConfigError, MissingCredentials

__all__ = ["AlpacaPaperBroker", "client_order_id"]

log = logging.getLogger(__name__)
KEY_VARIABLE, SECRET_VARIABLE = "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"
BASE_URL_VARIABLE = "APCA_API_BASE_URL"     # Alpaca's own name for a base-URL override
MAX_CLIENT_ORDER_ID = 48
_RETRYABLE = {429, 500, 502, 503, 504}
_ENDED = {"filled", "canceled", "expired", "rejected", "replaced"}
_TYPES = {bt.Order.Market: "market", bt.Order.Limit: "limit", bt.Order.Stop: "stop",
          bt.Order.StopLimit: "stop_limit"}


def client_order_id(run_id: str, number: int) -> str:
    """The ``client_order_id`` of a run's ``number``-th order: same inputs, same id, at most 48 characters."""
    cid = f"{run_id}-{number}"
    if len(cid) > MAX_CLIENT_ORDER_ID:
        cid = f"{hashlib.sha256(run_id.encode()).hexdigest()[:32]}-{number}"
    return cid


def _alpaca_py() -> SimpleNamespace:
    # Imported on use: alpaca-py is an optional extra.
    try:
        import requests
        from alpaca.common.exceptions import APIError
        from alpaca.trading import enums, requests as orders
        from alpaca.trading.client import TradingClient
    except ImportError:
        raise ImportError("the alpaca-paper:// broker needs alpaca-py: pip install 'thefarm[alpaca]'") from None
    return SimpleNamespace(APIError=APIError, RequestException=requests.exceptions.RequestException,
                           TradingClient=TradingClient, enums=enums, orders=orders)


def _error(api, exc: Exception, what: str) -> AlpacaAPIError:
    if not isinstance(exc, api.APIError):
        return AlpacaAPIError(f"Alpaca {what}: could not reach Alpaca: {exc}")
    try:
        message = str(json.loads(str(exc)).get("message", exc))
    except (ValueError, AttributeError):
        message = str(exc)
    return AlpacaAPIError(f"Alpaca {what}: HTTP {exc.status_code}: {message}", status=exc.status_code,
                          api_message=message)


def _retryable(exc: AlpacaAPIError) -> bool:
    return exc.status is None or exc.status in _RETRYABLE


def _signed(position) -> float:
    return abs(float(position.qty)) * (-1.0 if position.side.value == "short" else 1.0)


class AlpacaPaperBroker(bt.broker.BrokerBase):
    """A backtrader broker whose orders are Alpaca paper orders. Commission is 0, as on Alpaca."""

    def __init__(self, client, run_id: str, *, poll_interval: float = 2.0, submit_attempts: int = 3,
                 retry_wait: float = 1.0, time_in_force: str = "day", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.api, self.client, self.run_id = _alpaca_py(), client, run_id
        self.poll_interval, self.submit_attempts, self.retry_wait = poll_interval, submit_attempts, retry_wait
        self.time_in_force, self._clock, self._sleep = time_in_force, clock, sleep
        self.notifs: collections.deque = collections.deque()
        self.positions: dict[str, bt.Position] = collections.defaultdict(bt.Position)
        self.orders: dict[int, bt.Order] = {}       # backtrader ref → order
        self.cids: dict[int, str] = {}              # ref → client_order_id
        self._ids: dict[int, str] = {}              # ref → Alpaca order id, once Alpaca has the order
        self._submitted_at: dict[int, object] = {}
        self._filled: dict[int, tuple[float, float]] = {}   # ref → (filled qty, avg price) already applied
        self._unplaced: set[int] = set()            # outcome unknown: placed (lookup first) on the next poll
        self._posted: set[int] = set()              # refs this instance has POSTed at least once
        self._cancels: set[int] = set()
        self._resync: set[str] = set()              # symbols whose position is re-read from Alpaca
        self._cash = self._value = 0.0
        self._last_poll = float("-inf")
        self.poll_errors = 0

    @classmethod
    def from_env(cls, run_id: str, *, environ: Mapping[str, str] | None = None, url_override: str | None = None,
                 timeout: float = 10.0, **kwargs) -> "AlpacaPaperBroker":
        """A broker on Alpaca's paper API with the keys in ``environ`` (default ``os.environ``)."""
        api = _alpaca_py()
        environ = os.environ if environ is None else environ
        key, secret = ((environ.get(name) or "").strip() or None for name in (KEY_VARIABLE, SECRET_VARIABLE))
        if not (key and secret):
            unset = " and ".join(n for n, v in ((KEY_VARIABLE, key), (SECRET_VARIABLE, secret)) if not v)
            raise MissingCredentials(f"the alpaca-paper:// broker needs {KEY_VARIABLE} and {SECRET_VARIABLE}; "
                                     f"{unset} {'is' if ' and ' not in unset else 'are'} not set. Use the keys "
                                     "of a paper account (https://alpaca.markets, paper dashboard), or "
                                     "FARM_BROKER=sim:// to trade without an account.")
        url = (url_override or environ.get(BASE_URL_VARIABLE) or "").rstrip("/") or None
        if url and urlparse(url).hostname == "api.alpaca.markets":
            raise ConfigError(f"{url} is Alpaca's live-trading API; the alpaca-paper:// broker trades on paper only")
        client = api.TradingClient(key, secret, paper=True, url_override=url)
        # alpaca-py 0.44 re-POSTs blindly after 429/504 with a fixed 3 s sleep and has no switch for it;
        # the broker retries itself, looking the order up by client_order_id before posting again.
        client._retry = 0
        # requests has no default timeout: a stalled connection would otherwise hang the strategy loop.
        client._session.request = functools.partial(client._session.request, timeout=timeout)
        return cls(client, run_id, **kwargs)

    # --- backtrader broker interface ----------------------------------------------------------------------

    def start(self):
        super().start()
        self._refresh_account()
        self.startingcash = self._cash      # backtrader's writers and analyzers read it
        for p in self._call("positions", self.client.get_all_positions):
            self.positions[p.symbol].set(_signed(p), float(p.avg_entry_price))

    def getcash(self):
        return self._cash

    def getvalue(self, datas=None):
        if datas:
            return sum(self.getposition(d).size * d.close[0] for d in datas)
        return self._value

    def getposition(self, data, clone=True):
        pos = self.positions[self._symbol(data)]
        return pos.clone() if clone else pos

    def orderstatus(self, order):
        return self.orders[order.ref].status

    def buy(self, owner, data, size, price=None, plimit=None, exectype=None, valid=None, tradeid=0, **kwargs):
        return self._open(bt.BuyOrder, owner, data, size, price, plimit, exectype, valid, tradeid, kwargs)

    def sell(self, owner, data, size, price=None, plimit=None, exectype=None, valid=None, tradeid=0, **kwargs):
        return self._open(bt.SellOrder, owner, data, size, price, plimit, exectype, valid, tradeid, kwargs)

    def cancel(self, order):
        if order.ref in self.orders and self.orders[order.ref].alive():
            self._cancels.add(order.ref)
            self._send_cancels()        # Alpaca confirms asynchronously; the poll reports the outcome

    def next(self):
        if self._clock() - self._last_poll >= self.poll_interval:
            self.poll()
        self.notifs.append(None)        # notification boundary for cerebro's drain loop

    def notify(self, order):
        self.notifs.append(order.clone())

    def get_notification(self):
        return self.notifs.popleft() if self.notifs else None

    # --- orders ---------------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Bring this run's orders and the account up to date with Alpaca, notifying what changed."""
        self._last_poll = self._clock()
        try:
            for ref in sorted(self._unplaced):
                self._place(self.orders[ref], attempts=1)
            self._send_cancels()
            self._sync_positions()
            live = [ref for ref in self._ids if self.orders[ref].alive()]
            if live:
                earliest = min(self._submitted_at[ref] for ref in live) - timedelta(seconds=1)
                request = self.api.orders.GetOrdersRequest(status="all", after=earliest, limit=500, direction="asc")
                seen = {str(o.id): o for o in self._call("orders", self.client.get_orders, request)}
                for ref in live:
                    found = seen.get(self._ids[ref]) or self._call("order", self.client.get_order_by_id, self._ids[ref])
                    self._apply(self.orders[ref], found)
            self._refresh_account()
        except AlpacaAPIError as exc:   # a failed poll is retried at the next one; the loop goes on
            self.poll_errors += 1
            log.warning("polling Alpaca failed (%s); retrying in %.1f s", exc, self.poll_interval)

    def _open(self, cls, owner, data, size, price, plimit, exectype, valid, tradeid, info):
        linked = [info.pop(k, None) for k in ("oco", "parent", "trailamount", "trailpercent")]
        if any(linked) or not info.pop("transmit", True) or (exectype is not None and exectype not in _TYPES):
            raise ValueError("the alpaca-paper:// broker places simple Market, Limit, Stop and StopLimit orders; "
                             "brackets, OCO, trailing and Close orders are not supported")
        order = cls(owner=owner, data=data, size=size, price=price, pricelimit=plimit, exectype=exectype,
                    valid=valid, tradeid=tradeid)
        order.addcomminfo(self.getcommissioninfo(data))
        self.orders[order.ref] = order
        self.cids[order.ref] = client_order_id(self.run_id, len(self.cids) + 1)
        order.addinfo(**info, client_order_id=self.cids[order.ref])
        order.submit(self)
        self.notify(order)
        self._unplaced.add(order.ref)
        self._place(order, attempts=self.submit_attempts)
        return order

    def _place(self, order, attempts: int) -> None:
        cid = self.cids[order.ref]
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.retry_wait)
            try:
                # Look up first: an earlier attempt, or an earlier process, may have placed it already.
                found = self._lookup(cid)
                if found is None:
                    found = self._submit(order, cid)
            except AlpacaAPIError as exc:
                if _retryable(exc):
                    log.warning("submitting %s: %s (attempt %d of %d)", cid, exc, attempt + 1, attempts)
                    continue
                self._unplaced.discard(order.ref)
                order.addinfo(error=str(exc))
                order.reject(self)
                self.notify(order)
                return
            self._adopt(order, found)
            return
        # Still unknown: stays unplaced and is resolved, lookup first, by the next poll.

    def _submit(self, order, cid: str):
        self._posted.add(order.ref)
        try:
            return self._call("submit", self.client.submit_order, self._request(order, cid))
        except AlpacaAPIError as exc:
            # A refusal may be Alpaca's 422 for an id it already has (placed after our lookup).
            found = None if _retryable(exc) else self._lookup(cid)
            if found is None:
                raise
            return found

    def _lookup(self, cid: str):
        try:
            return self._call("order lookup", self.client.get_order_by_client_id, cid)
        except AlpacaAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def _adopt(self, order, found) -> None:
        self._unplaced.discard(order.ref)
        expected = (self._symbol(order.data), "buy" if order.isbuy() else "sell", abs(order.size))
        got = (found.symbol, found.side.value, float(found.qty or 0))
        if got != expected:
            order.addinfo(error=f"client_order_id {found.client_order_id} already names another order on "
                                f"Alpaca {got}, not {expected}; use a new run id for a new run")
            order.reject(self)
            self.notify(order)
            return
        self._ids[order.ref], self._submitted_at[order.ref] = str(found.id), found.submitted_at
        order.addinfo(alpaca_id=str(found.id))
        self._apply(order, found)
        if order.ref not in self._posted:
            # Placed by an earlier process: its fills may already be in the positions read at start,
            # so Alpaca's position for the symbol replaces ours (now, or at the next poll).
            self._resync.add(found.symbol)
            self._sync_positions()

    def _apply(self, order, found) -> None:
        status = found.status.value
        if order.status == order.Submitted and status != "rejected":
            order.accept(self)
            self.notify(order)
        done_qty, done_avg = self._filled.get(order.ref, (0.0, 0.0))
        qty = float(found.filled_qty or 0)
        if qty > done_qty:
            avg = float(found.filled_avg_price)
            # Alpaca reports the cumulative average price; the new slice is what moved it.
            price = (avg * qty - done_avg * done_qty) / (qty - done_qty)
            self._filled[order.ref] = (qty, avg)
            size = (qty - done_qty) * (1 if order.isbuy() else -1)
            self._execute(order, size, price, found.filled_at or found.updated_at)
        if status in _ENDED and order.alive():
            if status == "filled":
                order.completed()
            elif status == "rejected":
                order.reject(self)
            elif status == "expired":
                bt.OrderBase.expire(order)   # Order.expire() refuses to expire market orders
            else:
                order.cancel()
            self.notify(order)

    def _execute(self, order, size: float, price: float, when) -> None:
        pos = self.positions[self._symbol(order.data)]
        comminfo = order.comminfo or self.getcommissioninfo(order.data)
        entry = pos.price
        psize, pprice, opened, closed = pos.update(size, price)
        order.execute(bt.date2num(when.astimezone(timezone.utc).replace(tzinfo=None)), size, price,
                      closed, comminfo.getoperationcost(closed, entry), 0.0,
                      opened, comminfo.getoperationcost(opened, price), 0.0,
                      comminfo.getvaluesize(size, price), comminfo.profitandloss(-closed, entry, price),
                      psize, pprice)
        self.notify(order)

    def _send_cancels(self) -> None:
        for ref in sorted(self._cancels):
            if ref in self._unplaced:
                continue                    # cancelled once Alpaca's answer about it is known
            if ref not in self._ids:        # rejected before it reached Alpaca
                self._cancels.discard(ref)
                continue
            try:
                self._call("cancel", self.client.cancel_order_by_id, self._ids[ref])
            except AlpacaAPIError as exc:
                if _retryable(exc):
                    continue
                log.info("cancel of %s refused (%s); the poll reports its final state", self.cids[ref], exc)
            self._cancels.discard(ref)

    def _request(self, order, cid: str):
        o, e = self.api.orders, self.api.enums
        fields = dict(symbol=self._symbol(order.data), qty=abs(order.size), client_order_id=cid,
                      side=e.OrderSide.BUY if order.isbuy() else e.OrderSide.SELL,
                      time_in_force=e.TimeInForce("gtc" if "/" in self._symbol(order.data) else self.time_in_force))
        kind = _TYPES[order.exectype]
        if kind == "market":
            return o.MarketOrderRequest(**fields)
        if kind == "limit":
            return o.LimitOrderRequest(**fields, limit_price=order.created.price)
        if kind == "stop":
            return o.StopOrderRequest(**fields, stop_price=order.created.price)
        return o.StopLimitOrderRequest(**fields, stop_price=order.created.price, limit_price=order.created.pricelimit)

    # --- account ----------------------------------------------------------------------------------------------

    def _refresh_account(self) -> None:
        account = self._call("account", self.client.get_account)
        self._cash = float(account.cash or 0)
        self._value = float(account.equity or account.portfolio_value or self._cash)

    def _sync_positions(self) -> None:
        if not self._resync:
            return
        try:
            held = {p.symbol: p for p in self._call("positions", self.client.get_all_positions)}
        except AlpacaAPIError as exc:
            log.warning("reading positions failed (%s); retrying at the next poll", exc)
            return
        for symbol in self._resync:
            p = held.get(symbol)
            self.positions[symbol].set(_signed(p) if p else 0.0, float(p.avg_entry_price) if p else 0.0)
        self._resync.clear()

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (self.api.APIError, self.api.RequestException) as exc:
            raise _error(self.api, exc, what) from None

    @staticmethod
    def _symbol(data) -> str:
        return data._name or str(data.p.dataname)
