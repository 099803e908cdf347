"""An agent's broker as the API shows it: account, positions, orders.

``sim://``: the simulated broker lives inside the paper session, so its state is read from the
session's last checkpoint in the agent's state directory. ``alpaca-paper://``: Alpaca's paper account
through alpaca-py's ``TradingClient`` (``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``, ``APCA_API_BASE_URL``);
the orders shown are the agent's run's (their ``client_order_id`` derives from its run id).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from farmkit.live import checkpoint
from farmkit.brokers.alpaca_paper import BASE_URL_VARIABLE, KEY_VARIABLE, SECRET_VARIABLE, client_order_id
from farmkit.errors import ConfigError, MissingCredentials


class NoBrokerState(LookupError):
    """The agent has no paper session state to read yet."""


def _value(obj, name):
    value = getattr(obj, name, None)
    value = getattr(value, "value", value)      # alpaca-py enums
    return None if value is None else value


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
        saved = self._checkpoint(agent, state_dir, required=False)
        account = self.client().get_account()
        return {"agent": agent, "broker": "alpaca-paper", "run_id": saved.run_id if saved else None,
                "cash": _float(account.cash), "equity": _float(account.equity),
                "buying_power": _float(account.buying_power), "start_value": saved.start_value if saved else None,
                "currency": account.currency, "updated_at": saved.saved_at if saved else None}

    def positions(self, agent: str, state_dir: Path) -> list[dict]:
        if self.kind == "sim":
            saved = self._checkpoint(agent, state_dir)
            return [{"symbol": s, "qty": float(size), "avg_price": _float(price)}
                    for s, (size, price) in sorted(saved.positions.items()) if size]
        out = []
        for p in self.client().get_all_positions():
            qty = abs(float(p.qty)) * (-1 if _value(p, "side") == "short" else 1)
            out.append({"symbol": p.symbol, "qty": qty, "avg_price": _float(p.avg_entry_price),
                        "market_value": _float(p.market_value), "unrealized_pl": _float(p.unrealized_pl)})
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
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest
        mine = client_order_id(saved.run_id, 0).rsplit("-", 1)[0] + "-"
        orders = self.client().get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
        return [{"id": str(o.id), "client_order_id": o.client_order_id, "symbol": o.symbol,
                 "side": _value(o, "side"), "type": _value(o, "type") or _value(o, "order_type"),
                 "qty": _float(o.qty), "filled_qty": _float(o.filled_qty),
                 "filled_avg_price": _float(o.filled_avg_price), "limit_price": _float(o.limit_price),
                 "status": _value(o, "status"),
                 "submitted_at": o.submitted_at.isoformat() if o.submitted_at else None}
                for o in orders if (o.client_order_id or "").startswith(mine)]
