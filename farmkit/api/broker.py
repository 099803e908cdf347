"""An agent's broker as the API shows it: account, positions, orders.

``sim://``: the simulated broker lives inside the paper session, so its state is read from the
session's last checkpoint in the agent's state directory. ``alpaca-paper://``: Alpaca's paper account
through alpaca-py's ``TradingClient`` (``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``, ``APCA_API_BASE_URL``),
as the run's virtual sub-account: several agents share one account, so each sees only the orders whose
``client_order_id`` derives from its run id, and the positions and cash of their fills from the cash the
run started with (what its broker counts, :mod:`farmkit.brokers.subaccounts`), never the whole account.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from farmkit.live import checkpoint
from farmkit.brokers.alpaca_paper import BASE_URL_VARIABLE, KEY_VARIABLE, SECRET_VARIABLE
from farmkit.errors import ConfigError, MissingCredentials


class NoBrokerState(LookupError):
    """The agent has no paper session state to read yet."""


def _float(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class BrokerView:
    """Reads one agent's broker; ``url`` is ``FARM_BROKER``; ``environ`` holds the Alpaca keys."""

    def __init__(self, url: str, *, environ: Mapping[str, str] | None = None, trading_client=None):
        self.kind = url.split("://", 1)[0]
        if self.kind not in ("sim", "alpaca-paper"):
            raise ConfigError(f"unknown broker {url!r}; known: sim://, alpaca-paper://")
        self.environ = os.environ if environ is None else environ
        self._client = trading_client

    def _checkpoint(self, agent: str, state_dir: Path, required: bool = True):
        saved = checkpoint.load(state_dir)
        if saved is None and required:
            raise NoBrokerState(f"agent {agent} has no paper session state yet: start it with "
                                f"POST /api/paper-trading/{agent}/start")
        return saved

    def client(self):
        if self._client is None:
            key, secret = self.environ.get(KEY_VARIABLE), self.environ.get(SECRET_VARIABLE)
            if not (key and secret):
                raise MissingCredentials(f"the alpaca-paper:// broker needs {KEY_VARIABLE} and {SECRET_VARIABLE} "
                                         "in the API's environment")
            from alpaca.trading.client import TradingClient
            self._client = TradingClient(key, secret, paper=True,
                                         url_override=(self.environ.get(BASE_URL_VARIABLE) or "").rstrip("/") or None)
        return self._client

    def account(self, agent: str, state_dir: Path) -> dict:
        if self.kind == "sim":
            saved = self._checkpoint(agent, state_dir)
            return {"agent": agent, "broker": "sim", "run_id": saved.run_id, "cash": saved.cash,
                    "equity": saved.value, "start_value": saved.start_value, "buying_power": saved.cash,
                    "currency": None, "updated_at": saved.saved_at}
        self.client()           # the keys are checked first: a broker the API cannot reach is a 503
        saved = self._checkpoint(agent, state_dir, required=False)
        out = {"agent": agent, "broker": "alpaca-paper", "run_id": saved.run_id if saved else None, "cash": None,
               "equity": None, "buying_power": None, "start_value": saved.start_value if saved else None,
               "currency": "USD", "updated_at": saved.saved_at if saved else None}
        if saved is None or saved.start_value is None:
            return out          # no run yet: nothing on the account is this agent's
        book = self._sub_account(saved.run_id)
        cash = saved.start_value - sum(spent for _, spent, _ in book.values())
        marks = self._marks()
        equity = cash + sum(pos.size * marks.get(symbol, pos.price) for symbol, (pos, _, _) in book.items())
        return {**out, "cash": cash, "equity": equity, "buying_power": cash}

    def positions(self, agent: str, state_dir: Path) -> list[dict]:
        if self.kind == "sim":
            saved = self._checkpoint(agent, state_dir)
            return [{"symbol": s, "qty": float(size), "avg_price": _float(price)}
                    for s, (size, price) in sorted(saved.positions.items()) if size]
        saved = self._checkpoint(agent, state_dir, required=False)
        if saved is None:
            return []
        marks, out = self._marks(), []
        for symbol, (pos, _, _) in sorted(self._sub_account(saved.run_id).items()):
            if not pos.size:
                continue
            mark = marks.get(symbol)
            out.append({"symbol": symbol, "qty": float(pos.size), "avg_price": float(pos.price),
                        "market_value": None if mark is None else pos.size * mark,
                        "unrealized_pl": None if mark is None else pos.size * (mark - pos.price)})
        return out

    def orders(self, agent: str, state_dir: Path) -> list[dict]:
        if self.kind == "sim":
            saved = self._checkpoint(agent, state_dir)
            return [{"id": str(o.get("ref")), "client_order_id": o.get("client_order_id"), "symbol": o["symbol"],
                     "side": o["side"], "type": o.get("exectype"), "qty": _float(o.get("size")),
                     "limit_price": _float(o.get("price")), "status": "open"} for o in saved.open_orders]
        saved = self._checkpoint(agent, state_dir, required=False)
        if saved is None:
            return []       # no run yet: none of the account's orders are this agent's
        return [{"id": o.id, "client_order_id": o.client_order_id, "symbol": o.symbol, "side": o.side,
                 "type": o.order_type, "qty": o.qty, "filled_qty": o.filled_qty,
                 "filled_avg_price": o.filled_avg_price, "limit_price": o.limit_price, "status": o.status,
                 "submitted_at": o.submitted_at.isoformat() if o.submitted_at else None}
                for o in self._own_orders(saved.run_id)]

    # -- the run's virtual sub-account on a shared account (farmkit.brokers.subaccounts) --------------
    def _own_orders(self, run_id: str) -> list:
        """The run's orders on the account (its ``client_order_id`` prefix), oldest first, every page."""
        from farmkit.brokers.alpaca_account import AlpacaAccount
        from farmkit.brokers.subaccounts import AccountBook, order_number

        account = AlpacaAccount(self.client())
        rows = AccountBook(account.orders, account.order).refresh().rows.values()
        return sorted((r for r in rows if order_number(r.client_order_id, run_id) is not None),
                      key=lambda r: (r.submitted_at, r.id))

    def _sub_account(self, run_id: str) -> dict:
        """symbol -> (position, cash spent, orders) of the run's own fills, as its broker counts them."""
        import backtrader as bt

        out: dict = {}
        for row in sorted(self._own_orders(run_id), key=lambda r: (r.filled_at or r.submitted_at, r.id)):
            if not row.filled_qty:
                continue
            pos, spent, n = out.get(row.symbol) or (bt.Position(), 0.0, 0)
            price = row.filled_avg_price or 0.0
            pos.update(row.signed_filled, price)
            out[row.symbol] = (pos, spent + row.signed_filled * price, n + 1)
        return out

    def _marks(self) -> dict[str, float]:
        """The account's current price per symbol, where it holds the symbol."""
        from farmkit.brokers.alpaca_account import AlpacaAccount

        return {s: price for s, (_, price) in AlpacaAccount(self.client()).positions().items() if price is not None}
