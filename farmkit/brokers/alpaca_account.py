"""The Alpaca trading account as the broker reads and writes it: alpaca-py's ``TradingClient`` behind a few
calls that speak plain :class:`~farmkit.brokers.subaccounts.OrderRow` records and raise
:class:`~farmkit.errors.AlpacaAPIError` (with the HTTP status) for anything that went wrong.

    account = AlpacaAccount(client)
    account.lookup("paper-1-7")                 # the order with that client_order_id, or None
    account.orders("all", after=since)          # every order submitted since, oldest first, page by page
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from types import SimpleNamespace

from farmkit.brokers.subaccounts import OrderRow
from farmkit.errors import AlpacaAPIError

__all__ = ["PAGE", "AlpacaAccount", "alpaca_py", "retryable"]

PAGE = 500                                  # Alpaca's largest page of orders
_RETRYABLE = {429, 500, 502, 503, 504}


def alpaca_py() -> SimpleNamespace:
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


def retryable(exc: AlpacaAPIError) -> bool:
    """Worth trying again: no answer, rate-limited, or a server-side failure."""
    return exc.status is None or exc.status in _RETRYABLE


def _error(api, exc: Exception, what: str) -> AlpacaAPIError:
    if not isinstance(exc, api.APIError):
        return AlpacaAPIError(f"Alpaca {what}: could not reach Alpaca: {exc}")
    try:
        message = str(json.loads(str(exc)).get("message", exc))
    except (ValueError, AttributeError):
        message = str(exc)
    return AlpacaAPIError(f"Alpaca {what}: HTTP {exc.status_code}: {message}", status=exc.status_code,
                          api_message=message)


def _text(value) -> str:
    return str(getattr(value, "value", value) or "")


def _float(value) -> float | None:
    return None if value is None else float(value)


def row_of(order) -> OrderRow:
    """An alpaca-py ``Order`` as the plain row the sub-account counts."""
    return OrderRow(id=str(order.id), client_order_id=order.client_order_id or "", symbol=order.symbol,
                    side=_text(order.side), qty=float(order.qty or 0), filled_qty=float(order.filled_qty or 0),
                    filled_avg_price=_float(order.filled_avg_price), status=_text(order.status),
                    submitted_at=order.submitted_at or order.created_at, filled_at=order.filled_at,
                    updated_at=order.updated_at, order_type=_text(order.order_type or order.type) or "market",
                    limit_price=_float(order.limit_price), stop_price=_float(order.stop_price))


class AlpacaAccount:
    """One Alpaca account through ``client`` (alpaca-py's ``TradingClient``)."""

    def __init__(self, client, api: SimpleNamespace | None = None):
        self.client, self.api = client, api or alpaca_py()

    def call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (self.api.APIError, self.api.RequestException) as exc:
            raise _error(self.api, exc, what) from None

    def submit(self, request) -> OrderRow:
        return row_of(self.call("submit", self.client.submit_order, request))

    def cancel(self, order_id: str) -> None:
        self.call("cancel", self.client.cancel_order_by_id, order_id)

    def lookup(self, client_order_id: str) -> OrderRow | None:
        """The order with this ``client_order_id``, or None when Alpaca has none."""
        try:
            return row_of(self.call("order lookup", self.client.get_order_by_client_id, client_order_id))
        except AlpacaAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def order(self, order_id: str) -> OrderRow:
        return row_of(self.call("order", self.client.get_order_by_id, order_id))

    def recent(self, after: datetime) -> dict[str, OrderRow]:
        """One page of the orders submitted after ``after``, oldest first, by Alpaca id."""
        request = self.api.orders.GetOrdersRequest(status="all", after=after, limit=PAGE, direction="asc")
        return {row.id: row for row in map(row_of, self.call("orders", self.client.get_orders, request))}

    def orders(self, status: str, after: datetime) -> list[OrderRow]:
        """Every order of ``status`` (``"all"``, ``"open"``) submitted after ``after``, oldest first."""
        rows: dict[str, OrderRow] = {}
        while True:
            request = self.api.orders.GetOrdersRequest(status=status, after=after, limit=PAGE, direction="asc")
            page = [row_of(o) for o in self.call("orders", self.client.get_orders, request)]
            new = [r for r in page if r.id not in rows]
            rows.update((r.id, r) for r in page)
            if len(page) < PAGE or not new:
                return list(rows.values())
            # Alpaca's ``after`` is exclusive: step back a microsecond so equal times are not skipped.
            after = max(r.submitted_at for r in page) - timedelta(microseconds=1)

    def positions(self) -> dict[str, tuple[float, float | None]]:
        """The account's net position per symbol (short is negative) and its current price."""
        out = {}
        for p in self.call("positions", self.client.get_all_positions):
            side = -1.0 if _text(p.side) == "short" else 1.0
            out[p.symbol] = (abs(float(p.qty)) * side, _float(p.current_price))
        return out

    def cash(self) -> float:
        return float(self.call("account", self.client.get_account).cash or 0)
