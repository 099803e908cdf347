"""Look-ahead check: does a strategy decide differently when the future is not there?

A strategy that only uses the past makes the same decisions and tracks the same values on bar ``k``
whether the data ends at bar ``k`` or goes on for a year. So: backtest once on all the data, backtest
again on the data cut at a few points, and compare each truncated run, bar by bar, with the full run.

>>> from farmkit.research.lookahead import check_lookahead
>>> report = check_lookahead(SmaCross, bars, cuts=5, fast=5)
>>> report.ok, report.first_bar
>>> report.differences.head()
>>> report.raise_if_leaky()          # in a notebook cell that gates a sweep
"""

from __future__ import annotations

import html
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from farmkit.data.bars import Bars, to_bars
from farmkit.research.backtest import backtest
from farmkit.errors import FarmError, StrategyError
from farmkit.fmel.stores import open_store
from farmkit.result import BacktestResult
from farmkit.settings import Settings

COLUMNS = ["cut", "bar_number", "timestamp", "field", "full_value", "truncated_value"]
_REL_TOL = _ABS_TOL = 1e-9


class LookaheadError(FarmError, AssertionError):
    """A strategy's decisions or tracked values depend on bars after the one being decided."""


@dataclass(frozen=True)
class LookaheadReport:
    """What :func:`check_lookahead` found. ``cuts`` are the bar counts of the truncated runs;
    ``differences`` has one row per (cut, bar, field) that differed from the full run."""

    strategy: str
    bars: int
    cuts: tuple[int, ...]
    differences: pd.DataFrame
    full_run_id: str
    truncated_run_ids: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.differences.empty

    @property
    def first_bar(self) -> int | None:
        return None if self.ok else int(self.differences.bar_number.min())

    @property
    def first_timestamp(self) -> pd.Timestamp | None:
        return None if self.ok else self._first.timestamp.iloc[0]

    @property
    def _first(self) -> pd.DataFrame:
        first = self.differences[self.differences.bar_number == self.first_bar]
        return first[first.cut == first.cut.min()]

    def __str__(self) -> str:
        cuts = ", ".join(map(str, self.cuts))
        if self.ok:
            return (f"{self.strategy}: no look-ahead found; decisions and tracked values on runs cut "
                    f"after {cuts} of {self.bars} bars match the full run.")
        first = self._first
        fields = "; ".join(f"{r.field}: {_show(r.full_value)} with all the data, {_show(r.truncated_value)} "
                           f"with the data cut after {r.cut} bars" for r in first.itertuples())
        differing = ", ".join(dict.fromkeys(self.differences.field))
        return (f"{self.strategy} looks ahead: at bar {self.first_bar} ({self.first_timestamp}) it differs "
                f"when later bars are removed. {fields}. Over {len(self.differences)} difference(s), "
                f"these differed: {differing}. report.differences lists them all.")

    def _repr_html_(self) -> str:
        table = "" if self.ok else self.differences.head(20).to_html(index=False)
        return f"<p><b>{'OK' if self.ok else 'Look-ahead'}</b>: {html.escape(str(self))}</p>{table}"

    def to_dict(self) -> dict:
        """A JSON-ready summary (what `farm check-lookahead` reads back from the notebook)."""
        head = self.differences.head(50).astype({"timestamp": "string"}).astype(object)
        return {"ok": self.ok, "strategy": self.strategy, "bars": self.bars, "cuts": list(self.cuts),
                "first_bar": self.first_bar, "message": str(self), "full_run_id": self.full_run_id,
                "differences": head.where(head.notna(), None).to_dict("records")}

    def raise_if_leaky(self) -> "LookaheadReport":
        """Raise :class:`LookaheadError` with the report's message if anything differed."""
        if not self.ok:
            raise LookaheadError(str(self))
        return self


CHECK_SEGMENT = "lookahead"     # the registry's segment of a look-ahead check's own runs


def check_lookahead(strategy, data=None, *, cuts: int = 5, cash: float = 100_000.0, commission: float = 0.0,
                    settings: Settings | None = None, **params) -> LookaheadReport:
    """Backtest ``strategy`` on all of ``data`` and on ``cuts`` truncations of it (cut evenly between
    20% and 95% of the bars, every symbol at the same timestamp), and report where its decisions
    (action, symbol, size) or tracked values differ from the full run on the same bar.

    ``strategy`` may also be a finished backtest: its strategy, data, parameters and broker are reused.

    >>> check_lookahead(SmaCross, bars, fast=5).raise_if_leaky()
    >>> check_lookahead(res)            # res = fk.backtest(...)
    """
    broker = dict(cash=cash, commission=commission)
    if isinstance(strategy, BacktestResult):
        done = strategy
        strategy, data = done.strategy_class, done.prices if data is None else data
        params = {**done.params, **params}
        broker = done.broker.as_kwargs() if done.broker is not None else broker
    if data is None:
        raise TypeError("check_lookahead needs the data: check_lookahead(MyStrategy, bars, ...) or check_lookahead(res)")
    bars = to_bars(data)
    # A lookahead run must not take the id `farm backtest` queued for the notebook's own backtest. Its
    # runs are a check, not research: off the leaderboard, and out of the strategy's family of trials
    # (segment "lookahead"), so a truncated leaky run can neither top a board nor deflate anyone.
    settings = (settings or Settings.from_env()).replace(run_id=None, redis="off")
    store = open_store(settings.store)
    run = dict(**broker, settings=settings, store=store, agent_id=f"{strategy.__name__}/lookahead", **params)
    done_full = backtest(strategy, bars, **run)
    store.runs.upsert(done_full.run_id, segment=CHECK_SEGMENT)
    full = done_full.fmel
    clock = _clock(bars)
    found, counts, run_ids = [], [], []
    for n in _cut_points(bars, clock, cuts):
        last = clock[n - 1]
        part = Bars({s: f.iloc[: f.index.searchsorted(last, side="right")] for s, f in bars.items()})
        try:
            result = backtest(strategy, part, **run)
            records, run_id = result.fmel, result.run_id
        except StrategyError as exc:
            # Raising only when the data is cut (e.g. reading close[1] on the last bar) is a look-ahead
            # too; the bars before the error are still recorded and compared.
            records, run_id = store.fmel(exc.run_id), exc.run_id
            bar = exc.bar_number if exc.bar_number is not None else 0   # None: raised before the first bar
            found.append((n, bar, exc.timestamp, "error", None, str(exc).split(". FMEL")[0]))
        store.runs.upsert(run_id, segment=CHECK_SEGMENT)
        counts.append(n)
        run_ids.append(run_id)
        found.extend(_compare(full, records, n))
    # dtype=object keeps a null tracked value None instead of pandas turning it into NaN.
    differences = pd.DataFrame(found, columns=COLUMNS, dtype=object).astype({"cut": "int64", "bar_number": "int64"})
    differences["timestamp"] = pd.to_datetime(differences.timestamp, utc=True)
    differences = differences.sort_values(["bar_number", "cut"], kind="stable")
    return LookaheadReport(strategy.__name__, len(full), tuple(counts), differences.reset_index(drop=True),
                           str(full.run_id.iloc[0]) if len(full) else "", tuple(run_ids))


def _clock(bars: Bars) -> pd.DatetimeIndex:
    # backtrader steps once per distinct timestamp over all feeds: that is what a bar number counts.
    frames = list(bars.values())
    index = frames[0].index
    for frame in frames[1:]:
        index = index.union(frame.index)
    return index


def _cut_points(bars: Bars, clock: pd.DatetimeIndex, cuts: int) -> list[int]:
    # Every symbol needs at least one bar in a truncated run, or the run has no feed to start from.
    earliest = max(clock.searchsorted(f.index[0]) + 1 for f in bars.values())
    points = np.linspace(0.2, 0.95, max(cuts, 1)) * len(clock)
    return sorted({int(p) for p in points if earliest <= int(p) < len(clock)})


def _compare(full: pd.DataFrame, truncated: pd.DataFrame, cut: int) -> list[tuple]:
    out = []
    pairs = truncated[["bar_number", "decisions", "strategy_state"]].merge(
        full[["bar_number", "timestamp", "decisions", "strategy_state"]], on="bar_number", suffixes=("", "_full"))
    # The last bar before the cut is compared like any other: decisions and tracked values are made from
    # bars up to and including it, so only look-ahead can change them. Fills at the next open, which do
    # differ there, are in `actions` and `performance`, which are not compared. Identical JSON text is
    # the common case and needs no parsing.
    changed = ((pairs.decisions != pairs.decisions_full) | (pairs.strategy_state != pairs.strategy_state_full))
    for row in pairs[changed].itertuples(index=False):
        mine, theirs = _decisions(row.decisions), _decisions(row.decisions_full)
        if not _same(mine, theirs):
            out.append((cut, row.bar_number, row.timestamp, "decisions", theirs, mine))
        mine, theirs = _tracked(row.strategy_state), _tracked(row.strategy_state_full)
        for name in dict.fromkeys([*theirs, *mine]):
            if not _same(theirs.get(name), mine.get(name)):
                out.append((cut, row.bar_number, row.timestamp, f"tracked.{name}", theirs.get(name), mine.get(name)))
    return out


def _decisions(text) -> list:
    # The free-text reason, confidence and order refs are left out: refs come from a process-wide counter.
    return [[d.get("action"), d.get("symbol"), d.get("size")] for d in (json.loads(text) if text else [])]


def _tracked(text) -> dict:
    return (json.loads(text) or {}).get("tracked") or {} if text else {}


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value, default=str)


_MIME = "application/vnd.farm.lookahead+json"
_CHECK_CELL = """# added by `farm check-lookahead`
import farmkit as _fk
from IPython.display import display as _display
_done = [_v for _v in list(globals().values()) if isinstance(_v, _fk.BacktestResult)]
if not _done:
    raise RuntimeError("the notebook ran no fk.backtest, so there is nothing to check")
_display({%(mime)r: _fk.check_lookahead(_done[-1], cuts=%(cuts)d).to_dict()}, raw=True)
"""


def check_notebook(path, params: dict | None = None, *, cuts: int = 5, settings: Settings | None = None) -> dict:
    """Run a strategy notebook, then check its last backtest for look-ahead (see :func:`check_lookahead`).

    Returns the report as a dict (``ok``, ``first_bar``, ``message``, ``differences``).
    """
    import nbformat

    from farmkit.research import notebooks

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_CHECK_CELL % {"mime": _MIME, "cuts": cuts}))
    # Next to the original, so the notebook's relative paths still resolve.
    copy = path.with_name(f".{path.stem}.lookahead-{uuid.uuid4().hex[:6]}.ipynb")
    nbformat.write(nb, copy)
    try:
        run = notebooks.run(copy, params, settings=settings, progress=False)
    finally:
        copy.unlink(missing_ok=True)
    executed = nbformat.read(run.output, as_version=4)
    for output in executed.cells[-1].get("outputs", []):
        if _MIME in output.get("data", {}):
            return output["data"][_MIME]
    raise LookaheadError(f"{path}: the look-ahead check produced no report")
