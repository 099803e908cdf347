"""FMEL recorder: one record per bar per run, kept in columns while the strategy runs.

The per-bar work is a handful of appends to typed arrays: the length of each feed's and each
tracked indicator's line buffer (values are gathered from those buffers when a batch is written),
cash and value as the broker reported them, and any decisions and order events of the bar. A batch
becomes canonical FMEL rows (schema in `farmkit/schemas/fmel.json`) in one vectorised step.
"""

from __future__ import annotations

import copy
import json
import math
import time
from array import array
from collections import defaultdict, deque

import backtrader as bt
import duckdb
import numpy as np
import pyarrow as pa

from farmkit.fmel import schema
from farmkit.model import OrderEvent

_STATUS = {bt.Order.Submitted: "submitted", bt.Order.Accepted: "accepted", bt.Order.Partial: "partial",
           bt.Order.Completed: "filled", bt.Order.Canceled: "cancelled", bt.Order.Expired: "expired",
           bt.Order.Margin: "margin", bt.Order.Rejected: "rejected"}
_FIELDS = ("open", "high", "low", "close", "volume")
_HOLD = json.dumps([{"action": "hold", "symbol": None, "size": None, "reason": None,
                     "confidence": None, "signals": None}])


def num2ns(values: np.ndarray) -> np.ndarray:
    """backtrader float dates to int64 UTC nanoseconds, rounded to the millisecond (float days
    carry ~10 µs of noise at today's dates)."""
    values = np.asarray(values, dtype="float64")
    missing = ~np.isfinite(values)
    ms = np.rint((np.where(missing, 719163.0, values) - 719163.0) * 86_400_000.0).astype("int64")
    return np.where(missing, np.iinfo("int64").min, ms * 1_000_000)  # int64 min is NaT


def _line_buffer(obj):
    if isinstance(obj, bt.LineSeries):
        return obj.lines[0]
    if isinstance(obj, bt.linebuffer.LineBuffer):
        return obj
    return None


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _dumps(value) -> str:
    return json.dumps(value, default=_json_default, allow_nan=False) if _finite(value) else "null"


# Tracked values recorded as they are: immutable ones. So is a value whose type says it is made
# anew for each bar (``_fk_fresh_per_bar``, as the strategy's per-bar conditions).
_AS_IS = (int, float, str, bytes, type(None), np.generic)


def _snapshot(value):
    """A tracked value as it is now: a deep copy of what could change in place later."""
    if getattr(value, "_fk_fresh_per_bar", False):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - what cannot be copied is recorded as it is at the end
        return value


def _finite(value) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


SQL_KEY = b"farm.assembly_sql"      # a raw batch spilled before assembly carries its SQL


class Batch:
    """FMEL rows of bars ``first_bar``..``last_bar`` as the strategy thread gathered them (numbers and
    JSON fragments in columns), not yet in canonical form: :meth:`assemble` makes the rows, on whichever
    thread can spare the time. ``metadata`` goes onto the assembled table (e.g. its checkpoint)."""

    def __init__(self, frame: pa.Table, sql: str, first_bar: int, last_bar: int):
        self.frame, self.sql, self.first_bar, self.last_bar = frame, sql, first_bar, last_bar
        self.metadata: dict[bytes, bytes] = {}

    @property
    def num_rows(self) -> int:
        return self.frame.num_rows

    def assemble(self, con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
        """The canonical FMEL rows (``con``: a DuckDB connection to reuse; default a fresh one)."""
        if con is None:
            with duckdb.connect() as own:
                table = _run_sql(own, self.frame, self.sql)
        else:
            table = _run_sql(con, self.frame, self.sql)
        if self.metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **self.metadata})
        return table

    def to_table(self) -> pa.Table:
        """The raw batch as one table (SQL and metadata in its schema metadata), e.g. to spill it."""
        return self.frame.replace_schema_metadata({**self.metadata, SQL_KEY: self.sql.encode()})

    @classmethod
    def from_table(cls, table: pa.Table) -> "Batch | None":
        """The raw batch :meth:`to_table` wrote, or None for a table of canonical rows."""
        metadata = dict(table.schema.metadata or {})
        sql = metadata.pop(SQL_KEY, None)
        if sql is None:
            return None
        numbers = table.column("bar_number")
        batch = cls(table.replace_schema_metadata(None), sql.decode(), numbers[0].as_py(), numbers[-1].as_py())
        batch.metadata = metadata
        return batch


def _run_sql(con, frame: pa.Table, sql: str) -> pa.Table:
    con.execute("SET TimeZone = 'UTC'")
    con.register("frame", frame)
    try:
        table = con.sql(sql).to_arrow_table()
    finally:
        con.unregister("frame")
    return table.cast(schema.arrow_schema("fmel"))


class Assembler:
    """Makes canonical rows of what a deferring recorder hands on (a :class:`Batch`, or a spilled raw
    batch read back), with one DuckDB connection for the thread that calls it; tables that are
    already canonical pass through."""

    def __init__(self):
        self._con: duckdb.DuckDBPyConnection | None = None

    def __call__(self, item) -> pa.Table:
        batch = item if isinstance(item, Batch) else Batch.from_table(item)
        if batch is None:
            return item
        if self._con is None:
            # One DuckDB thread: small batches gain nothing from more, and a paper run's strategy
            # thread needs a free core more than the assembly does.
            self._con = duckdb.connect(config={"threads": 1})
        return batch.assemble(self._con)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class FmelRecorder:
    """Collects the FMEL of one run and hands batches of canonical rows to ``sink(table)``.

    ``batch_bars`` > 0 writes a batch every that many bars (paper runs); 0 writes once at the end.
    ``first_bar`` is the bar_number of the first record (a resumed paper run continues the numbering).
    While ``replaying`` is true (a resumed run going again over bars it had already recorded), bars,
    orders and trades are not recorded; orders whose ref is in ``ignored`` never are.
    With ``defer_assembly`` the sink receives :class:`Batch` objects and assembles them itself (an
    :class:`Assembler` on a writer thread): the strategy thread only gathers the numbers.
    """

    def __init__(self, run_id: str, agent_id: str, mode: str = "backtest", sink=None,
                 batch_bars: int = 0, flush_seconds: float = 1.0, clock=time.time, first_bar: int = 0,
                 defer_assembly: bool = False):
        self.run_id, self.agent_id, self.mode = run_id, agent_id, mode
        self.defer_assembly = defer_assembly
        self.first_bar = first_bar
        self.replaying = self.replay_done = False
        self.ignored: set[int] = set()
        self._carry_seed: dict[str, float] = {}
        self.sink, self.batch_bars, self.flush_seconds, self.clock = sink, batch_bars, flush_seconds, clock
        self._last_flush = clock()
        self.bars = 0                 # bars recorded
        self.written = 0              # bars handed to the sink
        self.rows_written = 0
        self.strategy = None
        self.timestamps = array("d")
        self.cash, self.value = array("d"), array("d")
        self.start_value = math.nan
        self.orders: list[OrderEvent] = []     # order events, with the bar they were seen at
        self.trades: list[dict] = []      # closed trades
        self.decisions: dict[int, list] = defaultdict(list)
        self.errors: dict[int, dict] = {}
        self.events: dict[int, list] = defaultdict(list)   # data events (late bars, malformed messages)
        self._pending_events: deque = deque()
        self._cash_now = self._value_now = math.nan
        self._filled: dict[int, float] = {}        # order ref -> size executed so far
        self._fills: list[tuple[int, int, float, float]] = []  # (bar, symbol index, size, price)
        self._open_trades: dict[int, float] = {}   # trade ref -> largest |size| seen
        self._peak = -math.inf
        self._assembler: Assembler | None = None    # batches assembled in place, one connection for all
        self._position_carry = None

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, strategy) -> None:
        self.strategy = strategy
        self.datas = list(strategy.datas)
        self.symbols = [d._name or f"data{i}" for i, d in enumerate(self.datas)]
        self._symbol_index = {id(d): i for i, d in enumerate(self.datas)}
        self._dtline = strategy.lines.datetime
        self._buffers = [d.lines.close for d in self.datas]
        self._lens = [array("q") for _ in self._buffers]
        self._tracked_names: list[str] = []          # tracked lines, in buffer order after the datas
        self._plain: dict[str, list] = {}            # tracked plain values, one list per name
        self._ntracked = -1
        self._copies = None       # with exactbars: values copied per bar, see _watch_bounded
        self._watched = False
        self._position_carry = np.array([float(self._carry_seed.get(s, 0.0)) for s in self.symbols])
        self._retrack()

    def lengths_at(self, bar: int) -> list[int]:
        """How many bars each feed had delivered at recorded bar ``bar`` (0-based in this recorder)."""
        return [self._lens[i][bar] for i in range(len(self.datas))]

    @property
    def position_carry(self) -> np.ndarray:
        """Position per symbol at the last bar handed to the sink."""
        return self._position_carry

    @property
    def peak(self) -> float:
        """Highest equity up to the last bar handed to the sink."""
        return self._peak

    def resume(self, *, positions: dict[str, float], start_value: float | None, peak: float | None) -> None:
        """Carry positions, starting value and equity peak over from a checkpoint of the same run."""
        self._carry_seed = dict(positions)
        if start_value is not None:
            self.start_value = float(start_value)
        if peak is not None:
            self._peak = float(peak)

    @property
    def _tracked(self) -> dict:
        return getattr(self.strategy, "_fk_tracked", None) or {}

    def _retrack(self) -> None:
        # track() may add names at any bar: earlier bars get null for them.
        for name, obj in self._tracked.items():
            if name in self._plain or name in self._tracked_names:
                continue
            buffer = _line_buffer(obj)
            if buffer is not None:
                self._tracked_names.append(name)
                self._buffers.append(buffer)
                self._lens.append(array("q", bytes(8 * self.bars)))
            else:
                self._plain[name] = [None] * self.bars
        self._pairs = list(zip(self._lens, self._buffers))
        self._ntracked = len(self._tracked)
        if self._copies is not None:
            self._copy_lines()

    def _watch_bounded(self) -> None:
        # With cerebro's exactbars, line buffers keep only their last values (backtrader makes them
        # bounded after the analyzers start): then values cannot be gathered from the buffers when a
        # batch is written, and are copied at every bar instead.
        self._watched = True
        lines = [getattr(d.lines, f) for d in self.datas for f in _FIELDS] + self._buffers[len(self.datas):]
        if any(getattr(line, "mode", 0) == bt.linebuffer.LineBuffer.QBuffer for line in lines):
            self._copies = {}
            self._copy_lines()

    def _copy_lines(self) -> None:
        keys = [(("m", i, f), getattr(d.lines, f)) for i, d in enumerate(self.datas) for f in _FIELDS]
        keys += [(("t", j), self._buffers[len(self.datas) + j]) for j in range(len(self._tracked_names))]
        for key, line in keys:
            if key not in self._copies:
                self._copies[key] = (array("d", [math.nan] * self.bars), line)

    # -- per bar (hot path) ----------------------------------------------------------------------
    def note_event(self, symbol: str | None, kind: str, detail: str) -> None:
        """A data event from the feed side (any thread); it lands in the next bar's market state."""
        self._pending_events.append({"symbol": symbol, "event": kind, "detail": detail,
                                     "at": round(self.clock(), 3)})

    def on_cashvalue(self, cash: float, value: float) -> None:
        self._cash_now, self._value_now = cash, value

    def on_bar(self) -> None:
        if self.replaying:
            self._skip_bar()
            return
        if not self._watched:
            self._watch_bounded()
        self.timestamps.append(self._dtline[0])
        self.cash.append(self._cash_now)
        self.value.append(self._value_now)
        for lens, buffer in self._pairs:
            lens.append(len(buffer))
        if self._copies is not None:
            for values, line in self._copies.values():
                values.append(line[0] if len(line) else math.nan)
        strategy = self.strategy
        tracked = getattr(strategy, "_fk_tracked", None)
        if tracked:
            if len(tracked) != self._ntracked:
                self._retrack()
            for name, column in self._plain.items():
                value = tracked[name]
                column.append(value if isinstance(value, _AS_IS) else _snapshot(value))
        noted = getattr(strategy, "_fk_decisions", None)
        if noted:
            self.decisions[self.bars].extend(noted)
            noted.clear()
        pending = self._pending_events
        if pending:
            events = self.events[self.bars]
            while pending:
                events.append(pending.popleft())
        self.bars += 1
        if self.batch_bars and (self.bars - self.written >= self.batch_bars
                                or self.clock() - self._last_flush >= self.flush_seconds):
            self.flush()

    def _skip_bar(self) -> None:
        noted = getattr(self.strategy, "_fk_decisions", None)
        if noted:
            noted.clear()
        if self.replay_done:
            self.replaying = self.replay_done = False

    def on_order(self, order) -> None:
        if self.replaying or order.ref in self.ignored:
            return
        bar = self.bars
        ref = order.ref
        executed = order.executed.size
        delta = executed - self._filled.get(ref, 0.0)
        symbol = self._symbol_index.get(id(order.data), 0)
        if delta:
            self._filled[ref] = executed
            self._fills.append((bar, symbol, delta, order.executed.price))
        self.orders.append(OrderEvent(
            bar, ref, self.symbols[symbol], _STATUS.get(order.status, str(order.getstatusname()).lower()),
            "buy" if order.isbuy() else "sell", order.getordername().lower(),
            order.created.size, order.created.price, order.created.dt,
            delta, order.executed.price if delta else None, order.executed.comm,
            order.executed.dt if delta else None, order.info.get("reason") if order.info else None,
        ))

    def on_trade(self, trade) -> None:
        if self.replaying:
            return
        size = abs(trade.size)
        self._open_trades[trade.ref] = max(self._open_trades.get(trade.ref, 0.0), size)
        if not trade.isclosed:
            return
        peak = self._open_trades.pop(trade.ref, 0.0) or 1.0
        sign = 1.0 if trade.long else -1.0
        self.trades.append({
            "symbol": trade.data._name, "opened_at": trade.dtopen, "closed_at": trade.dtclose,
            "size": sign * peak, "entry_price": trade.price,
            # Average exit price: exact for a trade opened and closed in one order each.
            "exit_price": trade.price + trade.pnl / (sign * peak),
            "pnl": trade.pnl, "pnl_net": trade.pnlcomm, "commission": trade.commission,
            "bars_held": trade.barlen,
        })

    def on_error(self, exc: BaseException, traceback_text: str, reason: str | None = None) -> int | None:
        """Record the bar on which the strategy raised, with the error (``reason``, default
        ``Type: message``); returns its bar number, or None when it raised before its first bar
        (then there is no bar to record)."""
        if not len(self.strategy) or not math.isfinite(self._dtline[0]):
            return None
        bar = self.bars
        self.on_bar()
        self.errors[bar] = {"action": "error", "symbol": None, "size": None,
                            "reason": reason or f"{type(exc).__name__}: {exc}", "confidence": None,
                            "signals": None, "traceback": traceback_text}
        return bar + self.first_bar

    # -- batches ---------------------------------------------------------------------------------
    def flush(self, chunk: int = 100_000) -> int:
        """Hand the bars recorded since the last flush to the sink, ``chunk`` rows per batch."""
        n = 0
        self._last_flush = self.clock()
        while self.written < self.bars:
            end = min(self.bars, self.written + chunk)
            batch = self.collect(self.written, end)
            out = batch if self.defer_assembly else self._assemble(batch)
            if self.sink is not None:
                self.sink(out)
            self.written = end
            self.rows_written += batch.num_rows
            n += batch.num_rows
        return n

    def batch(self, start: int, end: int) -> pa.Table:
        """Canonical FMEL rows for bars ``start`` to ``end`` (end excluded)."""
        return self._assemble(self.collect(start, end))

    def collect(self, start: int, end: int) -> Batch:
        """The raw :class:`Batch` of bars ``start`` to ``end``: everything read from the strategy's
        line buffers and order books (which only this thread may touch), ready to assemble."""
        cols: dict[str, np.ndarray | pa.Array] = {}
        cols["bar_number"] = np.arange(start + self.first_bar, end + self.first_bar, dtype="int64")
        cols["ts"] = pa.array(num2ns(np.frombuffer(self.timestamps, "f8")[start:end]),
                              pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("us", tz="UTC"))
        cash = np.frombuffer(self.cash, "f8")[start:end].copy()
        value = np.frombuffer(self.value, "f8")[start:end].copy()
        if math.isnan(self.start_value) and len(value):
            self.start_value = float(self.strategy.broker.startingcash)
        closes = []
        for i, d in enumerate(self.datas):
            idx = np.frombuffer(self._lens[i], "q")[start:end] - 1
            valid = idx >= 0
            for field in _FIELDS:
                vals = self._values(("m", i, field), getattr(d.lines, field), idx, valid, start, end)
                cols[f"m{i}_{field}"] = pa.array(vals, mask=~valid | np.isnan(vals))
                if field == "close":
                    closes.append(np.where(valid, vals, 0.0))
        for j, name in enumerate(self._tracked_names):
            k = len(self.datas) + j
            idx = np.frombuffer(self._lens[k], "q")[start:end] - 1
            valid = idx >= 0
            vals = self._values(("t", j), self._buffers[k], idx, valid, start, end)
            cols[f"t{j}"] = pa.array(vals, mask=~valid | ~np.isfinite(vals))
        for j, (name, values) in enumerate(self._plain.items()):
            cols[f"x{j}"] = pa.array([_dumps(v) for v in values[start:end]], pa.string())
        positions = self._positions(start, end)
        for i in range(len(self.datas)):
            cols[f"p{i}"] = positions[:, i]
        gross = np.abs(positions * np.column_stack(closes)).sum(axis=1) if closes else np.zeros(end - start)
        peak = np.maximum.accumulate(np.concatenate([[self._peak], value]))[1:]
        self._peak = float(peak[-1]) if len(peak) else self._peak
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["cash"] = cash
            cols["equity"] = value
            cols["pnl"] = value - self.start_value
            cols["ret"] = value / self.start_value - 1.0
            cols["dd"] = value / peak - 1.0
            cols["exposure"] = np.where(value != 0, gross / value, np.nan)
        cols["recorded_at"] = pa.array(np.full(end - start, int(self.clock() * 1e6), dtype="int64"),
                                       pa.timestamp("us", tz="UTC"))
        cols["decisions"] = pa.array([self._decisions_json(b) for b in range(start, end)], pa.string())
        cols["actions"] = pa.array(self._actions_json(start, end), pa.string())
        events = [self.events.get(b) for b in range(start, end)]
        self._with_events = any(events)
        if self._with_events:
            cols["ev"] = pa.array([json.dumps(e) if e else None for e in events], pa.string())
        frame = pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in cols.items()})
        return Batch(frame, self._sql(), start + self.first_bar, end - 1 + self.first_bar)

    def _values(self, key, line, idx, valid, start: int, end: int) -> np.ndarray:
        if self._copies is not None:
            copied = np.frombuffer(self._copies[key][0], "f8")[start:end]
            return np.where(valid, copied, np.nan)
        return self._gather(line, idx, valid)

    @staticmethod
    def _gather(line, idx, valid) -> np.ndarray:
        # A view on the live array.array would block it from growing: copy out what is needed.
        source = np.frombuffer(line.array, "f8")
        out = np.where(valid, source[np.where(valid, idx, 0)] if len(source) else np.nan, np.nan)
        del source
        return out

    def tracked_lines(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Every tracked line's value at each bar this recorder holds (NaN before it has one), and
        the symbol each line was computed on, where backtrader's clock says (the tearsheet draws
        those on that symbol's price)."""
        if not getattr(self, "_tracked_names", None):
            return {}, {}
        lines, owners = {}, {}
        for j, name in enumerate(self._tracked_names):
            k = len(self.datas) + j
            idx = np.frombuffer(self._lens[k], "q")[: self.bars] - 1
            lines[name] = self._values(("t", j), self._buffers[k], idx, idx >= 0, 0, self.bars)
            clock = getattr(self._tracked.get(name), "_clock", None)
            if id(clock) in self._symbol_index:
                owners[name] = self.symbols[self._symbol_index[id(clock)]]
        return lines, owners

    def position_deltas(self, start: int, end: int) -> np.ndarray:
        """Executed size per bar (rows ``start``..``end``) and symbol (columns), from the fills seen."""
        deltas = np.zeros((end - start, len(self.datas)))
        for bar, symbol, size, _ in self._fills:
            if start <= bar < end:
                deltas[bar - start, symbol] += size
        return deltas

    def _positions(self, start: int, end: int) -> np.ndarray:
        positions = np.cumsum(self.position_deltas(start, end), axis=0) + self._position_carry
        if len(positions):
            self._position_carry = positions[-1].copy()
        return positions

    def _decisions_json(self, bar: int) -> str | None:
        if bar in self.errors:
            return json.dumps([*self._decision_dicts(bar), self.errors[bar]])
        if bar not in self.decisions:
            return None
        return json.dumps(self._decision_dicts(bar), default=_json_default)

    def _decision_dicts(self, bar: int) -> list[dict]:
        return [d._asdict() for d in self.decisions.get(bar, ())]

    def _actions_json(self, start: int, end: int) -> list[str | None]:
        out: list[str | None] = [None] * (end - start)
        by_bar: dict[int, list] = defaultdict(list)
        for o in self.orders:
            if start <= o.bar < end:
                by_bar[o.bar].append({
                    "order": o.ref, "symbol": o.symbol, "event": o.event, "side": o.side, "type": o.type,
                    "size": o.size, "price": o.price if o.price is not None and math.isfinite(o.price or 0) else None,
                    "filled_size": o.filled_size or None, "fill_price": o.fill_price, "commission": o.commission,
                })
        for bar, events in by_bar.items():
            out[bar - start] = json.dumps(events, default=_json_default)
        return out

    def _sql(self) -> str:
        def lit(text: str) -> str:
            return "'" + str(text).replace("'", "''") + "'"

        market = ", ".join(
            f"{lit(sym)}, CASE WHEN m{i}_close IS NULL THEN NULL ELSE json_object("
            + ", ".join(f"'{f}', m{i}_{f}" for f in ("open", "high", "low", "close", "volume")) + ") END"
            for i, sym in enumerate(self.symbols))
        if self._with_events:
            market += ", 'events', json(coalesce(ev, '[]'))"
        tracked = [f"{lit(n)}, t{j}" for j, n in enumerate(self._tracked_names)]
        tracked += [f"{lit(n)}, json(x{j})" for j, n in enumerate(self._plain)]
        positions = ", ".join(f"{lit(sym)}, p{i}" for i, sym in enumerate(self.symbols))
        sql = f"""
            SELECT {lit(self.run_id)} || ':' || bar_number AS record_id,
                   {lit(self.run_id)} AS run_id, {lit(self.agent_id)} AS agent_id, {lit(self.mode)} AS mode,
                   ts AS timestamp, recorded_at, bar_number,
                   json_object({market})::VARCHAR AS market_state,
                   json_object('tracked', json_object({', '.join(tracked)}), 'positions', json_object({positions}),
                               'cash', cash)::VARCHAR AS strategy_state,
                   coalesce(decisions, {lit(_HOLD)}) AS decisions,
                   coalesce(actions, '[]') AS actions,
                   json_object('equity', equity, 'cash', cash, 'pnl', pnl, 'return', ret,
                               'drawdown', dd, 'exposure', exposure)::VARCHAR AS performance
            FROM frame ORDER BY bar_number"""
        return sql

    def _assemble(self, batch: Batch) -> pa.Table:
        if not self.batch_bars:   # a backtest writes once at the end: a connection for that alone
            return batch.assemble()
        # Batches every second: opening a connection costs ~17 ms, more than the batch; keep one until close().
        if self._assembler is None:
            self._assembler = Assembler()
        return self._assembler(batch)

    def close(self) -> None:
        """Close the recorder's DuckDB connection. Left to the garbage collector, it could be freed
        in a forked child (a sweep worker), which DuckDB does not survive."""
        if self._assembler is not None:
            self._assembler.close()
            self._assembler = None


class RecorderHook(bt.Analyzer):
    """The analyzer that feeds an :class:`FmelRecorder` from inside cerebro."""

    params = (("recorder", None),)

    def start(self):
        recorder = self.p.recorder
        recorder.attach(self.strategy)
        # Bind the hot-path callbacks directly: one call per bar instead of two.
        self.next = recorder.on_bar
        self.notify_order = recorder.on_order
        self.notify_trade = recorder.on_trade
        self.notify_cashvalue = recorder.on_cashvalue

    def get_analysis(self):
        return {"bars": self.p.recorder.bars}
