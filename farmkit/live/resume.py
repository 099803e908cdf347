"""Resuming a paper run: checkpoints taken from the recorder's own columns, and the hook that replays
warm-up bars without trading or recording them, then puts the broker back as it was.

A checkpoint describes the state at the last bar of an FMEL batch. It is taken in the strategy
thread when the batch is cut (so it matches that bar exactly, even if the process is stopped in the
middle of a later bar) and saved by the writer thread only once the batch is committed.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque

import backtrader as bt
import numpy as np
import pandas as pd
import pyarrow as pa

from farmkit.live.checkpoint import Checkpoint
from farmkit.fmel.recorder import Batch, FmelRecorder, num2ns

META_KEY = b"farm.checkpoint"
_EXECTYPES = {bt.Order.Market: "market", bt.Order.Limit: "limit", bt.Order.Stop: "stop",
              bt.Order.StopLimit: "stop_limit", bt.Order.Close: "close"}
_EXECTYPE_BY_NAME = {v: k for k, v in _EXECTYPES.items()}


def _ns(num: float) -> int:
    return int(num2ns(np.array([num]))[0])


class Snapshots:
    """Builds the checkpoint of each batch the recorder cuts (``annotate(batch)``, strategy thread)."""

    def __init__(self, recorder: FmelRecorder, broker, *, run_id: str, agent_id: str, tail_bars: int,
                 resume: Checkpoint | None = None):
        self.recorder, self.broker, self.tail_bars = recorder, broker, tail_bars
        self.run_id, self.agent_id = run_id, agent_id
        self.orders_placed = resume.orders_placed if resume else 0
        self._counted = 0          # recorder bars whose decisions were counted in orders_placed
        self._refs: set[int] = set()

    def annotate(self, batch: Batch) -> Batch:
        """The batch, with the checkpoint of its last bar in its metadata (it reaches the written table)."""
        if batch.num_rows:
            snapshot = self.take(batch.last_bar - self.recorder.first_bar)
            batch.metadata[META_KEY] = json.dumps(snapshot.to_dict()).encode()
        return batch

    def take(self, bar: int) -> Checkpoint:
        rec = self.recorder
        for b in range(self._counted, bar + 1):
            for decision in rec.decisions.get(b, ()):
                self._refs.update(decision.orders)
                self.orders_placed += len(decision.orders)
        self._counted = bar + 1
        last, tail, positions = {}, {}, {}
        for i, (symbol, data) in enumerate(zip(rec.symbols, rec.datas)):
            n = rec.lengths_at(bar)[i]
            if n <= 0:
                continue
            lines = data.lines
            last[symbol] = _ns(lines.datetime.array[n - 1])
            lo = max(0, n - self.tail_bars)
            stamps = num2ns(np.array(lines.datetime.array[lo:n]))
            columns = [np.array(getattr(lines, f).array[lo:n]) for f in ("open", "high", "low", "close", "volume")]
            tail[symbol] = [[int(t), *map(float, row)] for t, *row in zip(stamps, *columns)]
            size = float(rec.position_carry[i])
            if size:
                positions[symbol] = [size, float(self.broker.getposition(data).price)]
        return Checkpoint(run_id=self.run_id, agent_id=self.agent_id, bars_written=bar + 1 + rec.first_bar,
                          last=last, cash=_plain(rec.cash[bar]), value=_plain(rec.value[bar]),
                          start_value=_plain(rec.start_value), peak=_plain(rec.peak), positions=positions,
                          open_orders=self._open_orders(), tail=tail,
                          # A broker that numbers its orders (Alpaca's ids) may have given out more numbers.
                          orders_placed=max(self.orders_placed, getattr(self.broker, "orders_numbered", 0)))

    def _open_orders(self) -> list[dict]:
        orders = getattr(self.broker, "orders", [])
        orders = orders.values() if isinstance(orders, dict) else orders
        out = []
        state = getattr(self.broker, "order_state", None)      # what the broker needs to resume an order
        for order in orders:
            # Orders of bars not yet recorded are left out: those bars are decided again after a restart.
            # Orders restored after an earlier restart belong to bars recorded before it.
            if (order.ref not in self._refs and not (order.info or {}).get("restored")) or not order.alive():
                continue
            out.append({"ref": order.ref, "symbol": order.data._name, "side": "buy" if order.isbuy() else "sell",
                        "size": abs(float(order.created.size)), "exectype": _EXECTYPES.get(order.exectype, "market"),
                        "price": _plain(order.created.price),
                        "client_order_id": (order.info or {}).get("client_order_id"),
                        **(state(order) if state is not None else {})})
        return out


def _plain(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def checkpoint_of(table: pa.Table) -> Checkpoint | None:
    meta = (table.schema.metadata or {}).get(META_KEY)
    return Checkpoint.from_dict(json.loads(meta)) if meta else None


def tail_frames(resume: Checkpoint) -> dict[str, pd.DataFrame]:
    """The checkpoint's last bars per symbol as OHLCV frames (to append to the warm-up history)."""
    out = {}
    for symbol, rows in resume.tail.items():
        if rows:
            array = np.array(rows, dtype="float64")
            index = pd.DatetimeIndex(array[:, 0].astype("int64"), tz="UTC", name="timestamp")
            out[symbol] = pd.DataFrame(array[:, 1:], index=index, columns=["open", "high", "low", "close", "volume"])
    return out


class SessionHook(bt.Analyzer):
    """Sees every bar before the recorder. On a resumed run it replays the warm-up bars with the
    broker gated (orders are cancelled before they reach it: they were placed before the restart),
    restores the broker at the checkpoint bar, and then steps aside. Always: counts orders and
    measures the lag from a bar's arrival to the end of its decision, and calls ``on_decided`` after
    each decision (a paper run acks the bars it was made on)."""

    params = (("recorder", None), ("resume", None), ("arrivals", None), ("on_start", None),
              ("on_decided", None))

    def start(self):
        self._on_decided = self.p.on_decided
        self.orders = 0
        self.decision_lag = math.nan
        self.replaying = False
        if self.p.on_start is not None:
            self.p.on_start(self)
        recorder, resume = self.p.recorder, self.p.resume
        self._arrivals = self.p.arrivals or {}
        self._names = [d._name for d in self.strategy.datas]
        if resume is None or not resume.last:
            return
        broker = self.strategy.broker
        if isinstance(broker, bt.brokers.BackBroker):
            # The simulated account lives in this process only: put it back as the checkpoint saw it.
            if resume.cash is not None:
                broker.set_cash(resume.cash)
            for data in self.strategy.datas:
                if data._name in resume.positions:
                    size, price = resume.positions[data._name]
                    broker.positions[data].set(size, price)
        self._after = [resume.last.get(n) for n in self._names]
        self.replaying = recorder.replaying = True
        self._real = broker.buy, broker.sell
        broker.buy, broker.sell = self._gated(bt.BuyOrder), self._gated(bt.SellOrder)

    def _gated(self, cls):
        def place(owner, data, size, price=None, plimit=None, exectype=None, valid=None, tradeid=0, **kwargs):
            order = cls(owner=owner, data=data, size=size, price=price, pricelimit=plimit, exectype=exectype,
                        valid=valid, tradeid=tradeid)
            order.addcomminfo(self.strategy.broker.getcommissioninfo(data))
            order.addinfo(reason="replayed bar after a restart: decided before it, not placed again")
            order.cancel()
            self.p.recorder.ignored.add(order.ref)
            self.strategy.broker.notify(order)
            return order
        return place

    def _stamps(self) -> list[int | None]:
        return [_ns(d.datetime[0]) if len(d) else None for d in self.strategy.datas]

    def notify_cashvalue(self, cash, value):
        # Called at the start of every bar, before the strategy decides.
        if self.replaying and any(s is not None and a is not None and s > a
                                  for s, a in zip(self._stamps(), self._after)):
            self._end_replay(restore_orders=True)    # no bar matched the checkpoint's exactly
            self.p.recorder.replaying = False

    def notify_order(self, order):
        if order.status == order.Submitted and order.ref not in self.p.recorder.ignored:
            self.orders += 1

    def next(self):
        if self._on_decided is not None:
            self._on_decided()
        if self.replaying:
            if self._stamps() == self._after:      # the checkpoint's own bar: live from the next one
                self._end_replay(restore_orders=True)
                self.p.recorder.replay_done = True
            return
        if self._arrivals:
            now = time.time()
            for name, data in zip(self._names, self.strategy.datas):
                queue: deque | None = self._arrivals.get(name)
                if not queue or not len(data):
                    continue
                stamp, arrived = _ns(data.datetime[0]), None
                while queue and queue[0][0] <= stamp:
                    arrived = queue.popleft()[1]
                if arrived is not None:
                    self.decision_lag = now - arrived

    def _end_replay(self, restore_orders: bool) -> None:
        broker = self.strategy.broker
        broker.buy, broker.sell = self._real
        self.replaying = False
        if restore_orders and hasattr(broker, "restore_orders"):
            # Alpaca kept the open orders: they come back with the fills they had while the process was down.
            broker.restore_orders(self.strategy, self.p.resume.open_orders)
        elif restore_orders and isinstance(broker, bt.brokers.BackBroker):
            # The simulated ones died with the old process.
            for spec in self.p.resume.open_orders:
                data = self.strategy.getdatabyname(spec["symbol"])
                place = broker.buy if spec["side"] == "buy" else broker.sell
                place(self.strategy, data, spec["size"], price=spec.get("price"),
                      exectype=_EXECTYPE_BY_NAME.get(spec.get("exectype"), bt.Order.Market))

    def get_analysis(self):
        return {"orders": self.orders}
