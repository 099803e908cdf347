"""Restarts of the alpaca-paper:// broker: reconciling with the account when it starts, and giving back a
resumed run the orders open at its checkpoint.

The sub-account is rebuilt from the run's own fills on Alpaca (its orders found by their client_order_ids),
whatever the checkpoint says; the fills that orders open at the checkpoint had since wait until
:meth:`AlpacaRestarts.restore_orders` makes them orders of the strategy again, so that backtrader and FMEL
are told of each exactly once. Orders the dying process placed after its checkpoint are adopted when their
bars are decided again (their ids come round again), or stand on their own when the strategy decides
otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

import backtrader as bt

from farmkit.brokers.subaccounts import AccountBook, OrderRow, client_order_id, order_number

__all__ = ["AlpacaRestarts", "HeldOrder", "fill_slice"]

log = logging.getLogger(__name__)

_EXECTYPES = {"market": bt.Order.Market, "limit": bt.Order.Limit, "stop": bt.Order.Stop,
              "stop_limit": bt.Order.StopLimit}


def fill_slice(done: tuple[float, float], now: tuple[float, float]) -> tuple[float, float]:
    """(qty, price) of the fills between two of Alpaca's (cumulative qty, average price) reports."""
    (q0, a0), (q1, a1) = done, now
    return q1 - q0, (a1 * q1 - a0 * q0) / (q1 - q0)


@dataclass
class HeldOrder:
    """One of this run's orders on Alpaca, as far as the sub-account has counted its fills."""

    row: OrderRow                       # its latest known state
    counted: tuple[float, float] = (0.0, 0.0)   # (filled qty, average price) in the positions and cash
    ref: int | None = None              # the backtrader order it is, once there is one
    pending: bool = False               # open at the checkpoint: fills since are counted, and told, when restored


class AlpacaRestarts:
    """The restart half of :class:`~farmkit.brokers.alpaca_paper.AlpacaPaperBroker`."""

    def resume(self, checkpoint) -> None:
        """Reconcile, when the broker starts, with this checkpoint of the run (a
        :class:`farmkit.live.checkpoint.Checkpoint`; None: nothing to resume): ids carry on after the
        ``orders_placed`` it counted, and its ``open_orders`` are restored by :meth:`restore_orders`."""
        self._checkpoint = checkpoint

    @property
    def orders_numbered(self) -> int:
        """How many client_order_id numbers the run has given out (a checkpoint keeps it as ``orders_placed``)."""
        return self._numbered

    def restore_orders(self, owner, open_orders) -> list[bt.Order]:
        """The orders open at the checkpoint (its ``open_orders``), back as orders of ``owner`` (the strategy)
        for what was left of them then: the fills they had since are notified once, like any fill."""
        self._datas.update({self._symbol(d): d for d in owner.datas})
        by_id = {h.row.client_order_id: h for h in self._mine.values()}
        restored = []
        for spec in open_orders:
            held = by_id.get(spec.get("client_order_id"))
            if held is None:
                self._event(spec.get("symbol"), "order_missing",
                            f"order {spec.get('client_order_id')} was open at the checkpoint but is not on the "
                            "Alpaca account (was the paper account reset?); it is forgotten")
            elif held.pending:
                restored.append(self._restore(owner, held))
        return [o for o in restored if o is not None]

    def _restore(self, owner, held: HeldOrder) -> bt.Order | None:
        row, checkpointed, held.pending = held.row, held.pending, False
        data = self._datas.get(row.symbol)
        if data is None:
            log.warning("order %s in %s has no feed in this run: its fills count, unnotified", row.client_order_id,
                        row.symbol)
            self._count(held, row)
            return None
        kind = _EXECTYPES.get(row.order_type, bt.Order.Market)
        price = row.stop_price if kind in (bt.Order.Stop, bt.Order.StopLimit) else row.limit_price
        cls = bt.BuyOrder if row.side == "buy" else bt.SellOrder
        # Open at the checkpoint: what was left of it then (the strategy was told of its earlier fills before).
        # Otherwise all of it, every fill told (those counted at start are not counted again).
        base = held.counted if checkpointed else (0.0, 0.0)
        if row.qty - base[0] <= 0:
            return None                     # all filled by then: nothing left to restore or to tell
        order = cls(owner=owner, data=data, size=row.qty - base[0], price=price, exectype=kind,
                    pricelimit=row.limit_price if kind == bt.Order.StopLimit else None)
        order.addcomminfo(self.getcommissioninfo(data))
        order.addinfo(client_order_id=row.client_order_id, alpaca_id=row.id, restored=True)
        self.orders[order.ref], self.cids[order.ref] = order, row.client_order_id
        self._ids[order.ref], self._submitted_at[order.ref] = row.id, row.submitted_at
        self._filled[order.ref] = base
        held.ref = order.ref
        order.submit(self)
        order.accept(self)
        self.notify(order)
        self._apply(order, row)
        return order

    def order_state(self, order) -> dict:
        """What a checkpoint keeps of an open order to resume it: Alpaca's filled quantity and average price
        that the strategy has been told of."""
        qty, avg = self._filled.get(order.ref, (0.0, 0.0))
        return {"filled": qty, "filled_price": avg}

    def _reconcile(self) -> None:
        # The sub-account is rebuilt from the run's own fills on Alpaca, whatever the checkpoint says; only the
        # fills of orders open at the checkpoint since then wait, to be told when those orders are restored.
        checkpoint = self._checkpoint
        placed = checkpoint.orders_placed if checkpoint else 0
        open_then = {o.get("client_order_id"): o for o in (checkpoint.open_orders if checkpoint else ())}
        rows = self._find_mine(placed, open_then)
        self._cash, waiting = 0.0, 0.0      # what the fills counted now cost; what the waiting ones will
        for row in sorted(rows, key=lambda r: r.submitted_at):
            held = self._mine[row.id] = HeldOrder(row)
            spec = open_then.get(row.client_order_id)
            if spec is None:
                self._count(held, row)
                continue
            then = (min(float(spec.get("filled") or 0.0), row.filled_qty), float(spec.get("filled_price") or 0.0))
            self._count(held, replace(row, filled_qty=then[0], filled_avg_price=then[1]))
            held.row, held.pending = row, True
            if row.filled_qty > then[0]:
                qty, price = fill_slice(then, (row.filled_qty, row.filled_avg_price or 0.0))
                waiting += (qty if row.side == "buy" else -qty) * price
        spent = -self._cash
        if self.allocation is not None:
            self._cash = self.allocation - spent
        else:   # the whole account: its cash is this run's, less what the waiting fills will take from it
            self._cash = self.account.cash() + waiting
        numbers = [order_number(r.client_order_id, self.run_id) for r in rows]
        self._numbered = placed
        self._fresh_from = max([placed, *numbers]) + 1
        if rows or checkpoint is not None:
            holding = {s: p.size for s, p in self.positions.items() if p.size}
            self._event(None, "reconciled", f"{len(rows)} order(s) of run {self.run_id} on Alpaca, "
                        f"{sum(r.open for r in rows)} open; {sum(h.pending for h in self._mine.values())} open at "
                        f"the checkpoint come back with their fills; positions {holding or 'flat'}, cash "
                        f"{self._cash:.2f} before those fills")

    def _find_mine(self, placed: int, open_then: dict) -> list[OrderRow]:
        if self._checkpoint is None:
            # Ids count up from 1: ask for each until Alpaca has none (one request for a new run).
            rows, n = [], 1
            while (row := self.account.lookup(client_order_id(self.run_id, n))) is not None:
                rows.append(row)
                n += 1
            return rows
        # Resumed: list the account's orders since the run's first and keep the run's, by their ids (an id
        # Alpaca refused leaves a gap, which asking for each in turn would stop at).
        since = self._first_submitted(client_order_id(self.run_id, n) for n in range(1, 4))
        if since is None and not (placed or open_then):
            return []                       # nothing of this run ever reached Alpaca
        since = since - AccountBook.MARGIN if since is not None else AccountBook.EARLIEST
        return [r for r in self.account.orders("all", since) if order_number(r.client_order_id, self.run_id) is not None]

    def _first_submitted(self, cids) -> datetime | None:
        for cid in cids:
            row = self.account.lookup(cid)
            if row is not None:
                return row.submitted_at
        return None

    def _after_checkpoint(self, held: HeldOrder | None) -> bool:
        # An earlier process's order, placed after the checkpoint, that no order of this process stands for.
        return (self._checkpoint is not None and held is not None and held.ref is None and not held.pending
                and (order_number(held.row.client_order_id, self.run_id) or 0) > self._checkpoint.orders_placed)
