"""Virtual sub-accounts: several agents trading one brokerage account, each seeing only its own.

An agent's orders carry ``client_order_id``\\ s of the form ``<run id>-<n>`` (see
:func:`farmkit.brokers.alpaca_paper.client_order_id`), so every fill on the account belongs to the run that
placed it, or to nobody (an order placed by hand, whose id is one of Alpaca's UUIDs)::

    held = attribute(rows)              # {"AAPL": {"paper-1": 30.0, "paper-2": -20.0, None: 7.0}}
    refusal("AAPL", -30, account=-20.0, own=30.0, others=-50.0)   # -> why not, or None

The rules an agent's order must pass (:func:`refusal`), per symbol:

1. The account's net position equals the sum of its agents' positions. Anything else is held for nobody
   (traded by hand, or by orders without an agent's id), and the symbol is not traded until it is closed
   or attributed: the agents' positions would not add up to the account's.
2. A sale that takes the account net short is the agent's own short: an agent that is long or flat after
   the sale (closing a long) is refused while other agents' shorts would make it a short sale on the
   account, which Alpaca treats differently (borrow, margin, locates) from the sale the agent decided.

Buying is never refused by rule 2: it cannot open a short.

Pure functions on plain rows; :class:`AccountBook` keeps the rows of a whole account current through two
functions it is given, so it runs against any client.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = ["AccountBook", "OrderRow", "attribute", "client_order_id", "order_number", "owner_of", "refusal",
           "run_prefixes"]

MAX_CLIENT_ORDER_ID = 48

_AGENT_ID = re.compile(r"^(?P<owner>.+)-(?P<number>\d+)$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
OPEN = ("new", "accepted", "pending_new", "partially_filled", "pending_cancel", "pending_replace", "held",
        "accepted_for_bidding", "calculated", "stopped", "suspended", "done_for_day")


@dataclass(frozen=True)
class OrderRow:
    """One order on the account, as far as attribution needs it. ``side`` is ``"buy"`` or ``"sell"``."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    filled_qty: float
    filled_avg_price: float | None
    status: str
    submitted_at: datetime
    filled_at: datetime | None = None
    updated_at: datetime | None = None
    order_type: str = "market"
    limit_price: float | None = None
    stop_price: float | None = None

    @property
    def open(self) -> bool:
        return self.status in OPEN

    @property
    def signed_filled(self) -> float:
        return self.filled_qty if self.side == "buy" else -self.filled_qty


def client_order_id(run_id: str, number: int) -> str:
    """The ``client_order_id`` of a run's ``number``-th order: same inputs, same id, at most 48 characters."""
    cid = f"{run_id}-{number}"
    if len(cid) > MAX_CLIENT_ORDER_ID:
        cid = f"{_hashed(run_id)}-{number}"
    return cid


def _hashed(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


def run_prefixes(run_id: str) -> frozenset[str]:
    """What a run's ids start with: the run id, or its hash once ``<run id>-<n>`` is too long for Alpaca."""
    return frozenset((run_id, _hashed(run_id)))


def owner_of(client_order_id: str) -> str | None:
    """The run an order belongs to: its id without the trailing ``-<n>``; None for any other id."""
    found = _AGENT_ID.match(client_order_id or "")
    if found is None or _UUID.match(client_order_id):
        return None
    return found["owner"]


def order_number(client_order_id: str, run_id: str) -> int | None:
    """``n`` when ``client_order_id`` is the ``n``-th order of ``run_id`` (in either form of its prefix)."""
    found = _AGENT_ID.match(client_order_id or "")
    if found is None or found["owner"] not in run_prefixes(run_id):
        return None
    return int(found["number"])


def attribute(rows: Iterable[OrderRow]) -> dict[str, dict[str | None, float]]:
    """Filled quantity per symbol and owner (signed: short is negative); ``None`` holds what is nobody's."""
    out: dict[str, dict[str | None, float]] = {}
    for row in rows:
        held = out.setdefault(row.symbol, {})
        owner = owner_of(row.client_order_id)
        held[owner] = held.get(owner, 0.0) + row.signed_filled
    return out


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def refusal(symbol: str, size: float, *, account: float, own: float, others: float) -> str | None:
    """Why an order of ``size`` (signed: a sale is negative) in ``symbol`` must not be placed, or None.

    ``account`` is the account's net position, ``own`` the ordering agent's and ``others`` the sum of
    every other agent's (see the module's rules).
    """
    agents = own + others
    if not _same(account, agents):
        return (f"the account holds {account:g} {symbol} but its agents' orders account for {agents:g}: "
                f"{account - agents:+g} {symbol} belong to no agent (traded by hand, or by orders without an "
                f"agent's client_order_id); close or attribute them before trading {symbol} here")
    after_account, after_own = account + size, own + size
    if size < 0 and after_account < 0 and not _same(after_account, 0.0) and (after_own >= 0 or _same(after_own, 0)):
        return (f"selling {-size:g} {symbol} takes this agent from {own:g} to {after_own:g}, but the account "
                f"from {account:g} to {after_account:g} (other agents hold {others:g}): on the account it would "
                f"be a short sale this agent did not decide")
    return None


class AccountBook:
    """Every order on an account, kept current: ``list_orders(status, after)`` returns the orders of that
    status (``"all"`` or ``"open"``) submitted after ``after`` (all of them, paged by the caller), and
    ``get_order(id)`` one order. The first :meth:`refresh` reads the account's whole history; later ones
    read the open orders, the orders submitted since, and each order that closed in between."""

    EARLIEST = datetime(2015, 1, 1, tzinfo=timezone.utc)     # before Alpaca took its first order
    MARGIN = timedelta(seconds=60)                     # clocks and submission races

    def __init__(self, list_orders: Callable[[str, datetime], list[OrderRow]],
                 get_order: Callable[[str], OrderRow]):
        self.list_orders, self.get_order = list_orders, get_order
        self.rows: dict[str, OrderRow] = {}
        self._newest: datetime | None = None

    def refresh(self) -> "AccountBook":
        if self._newest is None:
            self._merge(self.list_orders("all", self.EARLIEST))
            return self
        was_open = {i for i, r in self.rows.items() if r.open}
        self._merge(self.list_orders("all", self._newest - self.MARGIN))
        still_open = {r.id for r in self._merge(self.list_orders("open", self.EARLIEST)) if r.open}
        for order_id in sorted(was_open - still_open):
            if self.rows[order_id].open:     # closed since: its final fills come from the order itself
                self._merge([self.get_order(order_id)])
        return self

    def _merge(self, rows: list[OrderRow]) -> list[OrderRow]:
        for row in rows:
            self.rows[row.id] = row
            if self._newest is None or row.submitted_at > self._newest:
                self._newest = row.submitted_at
        if self._newest is None:
            self._newest = self.EARLIEST
        return rows

    def held(self, symbol: str) -> Mapping[str | None, float]:
        """Filled quantity in ``symbol`` per owner (``None``: nobody's)."""
        return attribute(r for r in self.rows.values() if r.symbol == symbol).get(symbol, {})
