"""Alpaca paper trading as a backtrader broker, through alpaca-py's ``TradingClient``.

    broker = AlpacaPaperBroker.from_env("paper-aapl-1", cash=50_000)   # keys from APCA_API_KEY_ID / ..._SECRET_KEY
    cerebro.setbroker(broker)

Each order carries ``client_order_id(run_id, n)`` (n counts the run's orders), and the broker looks that
id up before it posts: a retried submit, or a restarted process submitting again, adopts the order Alpaca
already has instead of placing a second one. Fills, cancels and rejections come from polling Alpaca in
``next()`` (at most every ``poll_interval`` seconds) and reach the strategy as backtrader notifications.

The broker is a virtual sub-account of the Alpaca account (:mod:`farmkit.brokers.subaccounts`): its
positions, cash and value are those of its own orders' fills, starting from ``cash`` (by default the
account's cash when it starts), so several runs can share one account; an order whose symbol the account
holds for no run, or that would turn a closing sale into a short sale on the account, is refused with
the reason. On start it reconciles with the account: the run's orders are found by their ids, and a run
resumed from a checkpoint (:meth:`resume`) gets back the orders open at the checkpoint
(:meth:`restore_orders`) with every fill they had since, notified once.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import backtrader as bt

from farmkit.brokers.alpaca_account import AlpacaAccount, alpaca_py, retryable
from farmkit.brokers.alpaca_restarts import AlpacaRestarts, HeldOrder, fill_slice
from farmkit.brokers.subaccounts import AccountBook, OrderRow, client_order_id, order_number, refusal, run_prefixes
from farmkit.errors import AlpacaAPIError, ConfigError, MissingCredentials

__all__ = ["AlpacaPaperBroker", "client_order_id"]

log = logging.getLogger(__name__)
KEY_VARIABLE, SECRET_VARIABLE = "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"
BASE_URL_VARIABLE = "APCA_API_BASE_URL"     # Alpaca's own name for a base-URL override
_ENDED = {"filled", "canceled", "expired", "rejected", "replaced"}
_TYPES = {bt.Order.Market: "market", bt.Order.Limit: "limit", bt.Order.Stop: "stop",
          bt.Order.StopLimit: "stop_limit"}


def _position_symbol(symbol: str) -> str:
    # Alpaca names a crypto position without the slash of its orders' symbol: BTCUSD holds BTC/USD.
    return symbol.replace("/", "")


class AlpacaPaperBroker(AlpacaRestarts, bt.broker.BrokerBase):
    """A backtrader broker whose orders are Alpaca paper orders. Commission is 0, as on Alpaca."""

    def __init__(self, client, run_id: str, *, cash: float | None = None, poll_interval: float = 2.0,
                 submit_attempts: int = 3, retry_wait: float = 1.0, time_in_force: str = "day",
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.account, self.client, self.run_id = AlpacaAccount(client), client, run_id
        self.api = self.account.api
        self.allocation = None if cash is None else float(cash)
        self.poll_interval, self.submit_attempts, self.retry_wait = poll_interval, submit_attempts, retry_wait
        self.time_in_force, self._clock, self._sleep = time_in_force, clock, sleep
        self.on_event: Callable[[str | None, str, str], None] | None = None   # (symbol, kind, detail), e.g. FMEL's
        self.notifs: collections.deque = collections.deque()
        self.positions: dict[str, bt.Position] = collections.defaultdict(bt.Position)
        self.orders: dict[int, bt.Order] = {}       # backtrader ref → order
        self.cids: dict[int, str] = {}              # ref → client_order_id
        self._ids: dict[int, str] = {}              # ref → Alpaca order id, once Alpaca has the order
        self._submitted_at: dict[int, object] = {}
        self._filled: dict[int, tuple[float, float]] = {}   # ref → (Alpaca filled qty, avg price) notified
        self._unplaced: set[int] = set()            # outcome unknown: placed (lookup first) on the next poll
        self._posted: set[int] = set()              # refs this instance has POSTed at least once
        self._cancels: set[int] = set()
        self._mine: dict[str, HeldOrder] = {}       # Alpaca order id → this run's order
        self._numbered = 0                          # client_order_id numbers given out
        self._fresh_from: int | None = None         # numbers from which start found nothing on Alpaca
        self._checkpoint = None
        self._datas: dict[str, object] = {}         # symbol → backtrader feed, to mark positions and restore
        self._marks: dict[str, float] = {}          # symbol → latest price seen on Alpaca or in a fill
        self._book = AccountBook(self.account.orders, self.account.order)
        self._prefixes = run_prefixes(run_id)
        self._cash = 0.0
        self._last_poll = float("-inf")
        self.poll_errors = 0

    @classmethod
    def from_env(cls, run_id: str, *, environ: Mapping[str, str] | None = None, url_override: str | None = None,
                 timeout: float = 10.0, **kwargs) -> "AlpacaPaperBroker":
        """A broker on Alpaca's paper API with the keys in ``environ`` (default ``os.environ``)."""
        api = alpaca_py()
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
        self._reconcile()
        self.startingcash = self.allocation if self.allocation is not None else self._cash

    def getcash(self):
        return self._cash

    def getvalue(self, datas=None):
        if datas:
            return sum(self.getposition(d).size * d.close[0] for d in datas)
        return self._cash + sum(p.size * self._mark(s) for s, p in self.positions.items() if p.size)

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
        """Bring this run's orders and its sub-account up to date with Alpaca, notifying what changed."""
        self._last_poll = self._clock()
        try:
            for ref in sorted(self._unplaced):
                self._place(self.orders[ref], attempts=1)
            self._send_cancels()
            live = [ref for ref in self._ids if self.orders[ref].alive()]
            loose = [h for h in self._mine.values() if h.ref is None and not h.pending and h.row.open]
            if live or loose:
                earliest = min([self._submitted_at[r] for r in live] + [h.row.submitted_at for h in loose])
                seen = self.account.recent(earliest - timedelta(seconds=1))
                for ref in live:
                    self._apply(self.orders[ref], seen.get(self._ids[ref]) or self.account.order(self._ids[ref]))
                for held in loose:      # an earlier process's order no strategy order stands for
                    self._count(held, seen.get(held.row.id) or self.account.order(held.row.id))
            self._account_positions()
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
        self._datas.setdefault(self._symbol(data), data)
        self.orders[order.ref] = order
        self._numbered += 1
        self.cids[order.ref] = client_order_id(self.run_id, self._numbered)
        order.addinfo(**info, client_order_id=self.cids[order.ref])
        order.submit(self)
        self.notify(order)
        self._unplaced.add(order.ref)
        self._place(order, attempts=self.submit_attempts)
        return order

    def _place(self, order, attempts: int) -> None:
        attempt = 0
        while attempt < attempts:
            if attempt:
                self._sleep(self.retry_wait)
            cid = self.cids[order.ref]
            try:
                # Look up first: an earlier attempt, or an earlier process, may have placed it already
                # (unless start found nothing with this number or above, and it was never posted).
                fresh = (not attempt and order.ref not in self._posted and self._fresh_from is not None
                         and (order_number(cid, self.run_id) or 0) >= self._fresh_from)
                found = None if fresh else self.account.lookup(cid)
                if found is None:
                    reason = self._refusal(order)
                    if reason is not None:
                        self._refuse(order, reason)
                        return
                    found = self._submit(order, cid)
            except AlpacaAPIError as exc:
                attempt += 1
                if retryable(exc):
                    log.warning("submitting %s: %s (attempt %d of %d)", cid, exc, attempt, attempts)
                    continue
                self._unplaced.discard(order.ref)
                order.addinfo(error=str(exc))
                order.reject(self)
                self.notify(order)
                return
            if self._adopt(order, found):
                return
            # Renumbered (the id was an earlier process's order): place it under its new id, now.
        # Still unknown: stays unplaced and is resolved, lookup first, by the next poll.

    def _submit(self, order, cid: str):
        self._posted.add(order.ref)
        try:
            return self.account.submit(self._request(order, cid))
        except AlpacaAPIError as exc:
            # A refusal may be Alpaca's 422 for an id it already has (placed after our lookup).
            found = None if retryable(exc) else self.account.lookup(cid)
            if found is None:
                raise
            return found

    def _adopt(self, order, found: OrderRow) -> bool:
        """Make ``order`` the Alpaca order ``found``; False when ``order`` was given a new id instead."""
        expected = (self._symbol(order.data), "buy" if order.isbuy() else "sell", abs(order.size))
        got = (found.symbol, found.side, found.qty)
        if got != expected:
            held = self._mine.get(found.id)
            if self._after_checkpoint(held) and order.ref not in self._posted:
                # Placed after the checkpoint by the earlier process, and decided otherwise since: that order
                # and the others after it stand on their own, and this one takes the next free number.
                for other in [h for h in self._mine.values() if self._after_checkpoint(h)]:
                    self._restore(order.owner, other)
                self._numbered = max([self._numbered] + [order_number(h.row.client_order_id, self.run_id) or 0
                                                         for h in self._mine.values()]) + 1
                self.cids[order.ref] = client_order_id(self.run_id, self._numbered)
                order.addinfo(client_order_id=self.cids[order.ref])
                return False
            self._unplaced.discard(order.ref)
            order.addinfo(error=f"client_order_id {found.client_order_id} already names another order on "
                                f"Alpaca {got}, not {expected}; use a new run id for a new run")
            order.reject(self)
            self.notify(order)
            return True
        self._unplaced.discard(order.ref)
        self._ids[order.ref], self._submitted_at[order.ref] = found.id, found.submitted_at
        order.addinfo(alpaca_id=found.id)
        self._apply(order, found)
        return True

    def _apply(self, order, row: OrderRow) -> None:
        held = self._mine.setdefault(row.id, HeldOrder(row))
        held.ref, held.pending = order.ref, False
        if order.status == order.Submitted and row.status != "rejected":
            order.accept(self)
            self.notify(order)
        notified = self._filled.get(order.ref, (0.0, 0.0))
        if row.filled_qty > notified[0]:
            when = row.filled_at or row.updated_at or datetime.now(timezone.utc)
            if held.counted[0] > notified[0]:
                # Counted into the sub-account already (at start, from the account): told now, counted once.
                self._execute(order, *self._sized(order, fill_slice(notified, held.counted)), when, None)
            counted = self._count(held, row)
            if counted is not None:
                size, price, booked = counted
                self._execute(order, size, price, when, booked)
            self._filled[order.ref] = (row.filled_qty, row.filled_avg_price or 0.0)
        if row.status in _ENDED and order.alive():
            if row.status == "filled":
                order.completed()
            elif row.status == "rejected":
                order.reject(self)
            elif row.status == "expired":
                bt.OrderBase.expire(order)   # Order.expire() refuses to expire market orders
            else:
                order.cancel()
            self.notify(order)

    @staticmethod
    def _sized(order, part: tuple[float, float]) -> tuple[float, float]:
        qty, price = part
        return (qty if order.isbuy() else -qty), price

    def _count(self, held: HeldOrder, row: OrderRow):
        """Count ``row``'s new fills into the sub-account's position and cash; returns (size, price, what the
        position did) for the new slice, or None."""
        held.row = row
        if row.filled_qty <= held.counted[0]:
            return None
        now = (row.filled_qty, row.filled_avg_price or 0.0)
        qty, price = fill_slice(held.counted, now)
        held.counted = now
        size = qty if row.side == "buy" else -qty
        pos = self.positions[row.symbol]
        entry = pos.price
        self._cash -= size * price
        self._marks[_position_symbol(row.symbol)] = price
        return size, price, (entry, *pos.update(size, price))

    def _execute(self, order, size: float, price: float, when, booked) -> None:
        pos = self.positions[self._symbol(order.data)]
        if booked is None:      # what the position did when this slice was counted
            before = bt.Position(pos.size - size, pos.price)
            booked = (before.price, *before.update(size, price))
        entry, psize, pprice, opened, closed = booked
        comminfo = order.comminfo or self.getcommissioninfo(order.data)
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
                self.account.cancel(self._ids[ref])
            except AlpacaAPIError as exc:
                if retryable(exc):
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

    # --- the shared account ---------------------------------------------------------------------------------

    def _refusal(self, order) -> str | None:
        """Why the account must not take ``order`` (see :func:`farmkit.brokers.subaccounts.refusal`), or None."""
        symbol = self._symbol(order.data)
        account = self._account_positions().get(_position_symbol(symbol), 0.0)
        if abs(account - self.positions[symbol].size) <= 1e-9 * max(1.0, abs(account)):
            return None         # the account holds what this run does: nobody else's, nothing unexplained
        for again in (False, True):
            if again:           # a fill may have landed between reading the orders and the positions
                account = self._account_positions().get(_position_symbol(symbol), 0.0)
            held = self._book.refresh().held(symbol)
            own = sum(q for owner, q in held.items() if owner in self._prefixes)
            others = sum(q for owner, q in held.items() if owner is not None and owner not in self._prefixes)
            reason = refusal(symbol, order.size, account=account, own=own, others=others)
            if reason is None:
                return None
        return reason

    def _refuse(self, order, reason: str) -> None:
        self._unplaced.discard(order.ref)
        order.addinfo(error=reason)
        order.reject(self)
        self.notify(order)
        symbol = self._symbol(order.data)
        detail = f"order {self.cids[order.ref]} ({'buy' if order.isbuy() else 'sell'} {abs(order.size):g} {symbol}) " \
                 f"refused: {reason}"
        log.warning("%s", detail)
        self._event(symbol, "order_refused", detail)

    def _event(self, symbol: str | None, kind: str, detail: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(symbol, kind, detail)
            except Exception as exc:  # noqa: BLE001 - a failing recorder must not stop the trading loop
                log.warning("could not record the broker event %s (%s)", kind, exc)

    def _account_positions(self) -> dict[str, float]:
        """The account's net position per symbol as Alpaca names positions (see ``_position_symbol``)."""
        held = self.account.positions()
        self._marks.update((symbol, price) for symbol, (_, price) in held.items() if price is not None)
        return {symbol: qty for symbol, (qty, _) in held.items()}

    def _mark(self, symbol: str) -> float:
        data = self._datas.get(symbol)
        if data is not None and len(data):
            return float(data.close[0])
        return self._marks.get(_position_symbol(symbol), self.positions[symbol].price)

    @staticmethod
    def _symbol(data) -> str:
        return data._name or str(data.p.dataname)
