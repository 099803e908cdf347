"""What a look-ahead check found, and how a cut run is compared with the full run, bar by bar.

Shared by the strategy-class check (:mod:`farmkit.research.lookahead`) and the whole-notebook check
(:mod:`farmkit.research.lookahead_notebook`).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from farmkit.data.bars import Bars
from farmkit.errors import FarmError

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

    def raise_if_leaky(self) -> LookaheadReport:
        """Raise :class:`LookaheadError` with the report's message if anything differed."""
        if not self.ok:
            raise LookaheadError(str(self))
        return self


CHECK_SEGMENT = "lookahead"     # the registry's segment of a look-ahead check's own runs


def _clock(bars: Bars) -> pd.DatetimeIndex:
    # backtrader steps once per distinct timestamp over all feeds: that is what a bar number counts.
    frames = list(bars.values())
    index = frames[0].index
    for frame in frames[1:]:
        index = index.union(frame.index)
    return index


def _cut_points(bars: Bars, clock: pd.DatetimeIndex, cuts: int, warmup: int = 0) -> list[int]:
    # Every symbol needs at least one bar in a truncated run, or the run has no feed to start from,
    # and the strategy's warm-up and one bar more, or the truncated run never calls next(): a run
    # that fails for want of bars tells nothing about look-ahead.
    earliest = max(clock.searchsorted(f.index[0]) + 1 + warmup for f in bars.values())
    points = np.linspace(0.2, 0.95, max(cuts, 1)) * len(clock)
    return sorted({int(p) for p in points if earliest <= int(p) < len(clock)})


def _compare(full: pd.DataFrame, truncated: pd.DataFrame, cut: int, rel_tol: float = _REL_TOL) -> list[tuple]:
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
        if not _same(mine, theirs, rel_tol):
            out.append((cut, row.bar_number, row.timestamp, "decisions", theirs, mine))
        mine, theirs = _tracked(row.strategy_state), _tracked(row.strategy_state_full)
        for name in dict.fromkeys([*theirs, *mine]):
            if not _same(theirs.get(name), mine.get(name), rel_tol):
                out.append((cut, row.bar_number, row.timestamp, f"tracked.{name}", theirs.get(name), mine.get(name)))
    return out


def _decisions(text) -> list:
    # The free-text reason, confidence and order refs are left out: refs come from a process-wide counter.
    return [[d.get("action"), d.get("symbol"), d.get("size")] for d in (json.loads(text) if text else [])]


def _tracked(text) -> dict:
    return (json.loads(text) or {}).get("tracked") or {} if text else {}


def _same(a, b, rel_tol: float = _REL_TOL) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=_ABS_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel_tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel_tol) for k in a)
    return a == b


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value, default=str)


def _differences(found: list[tuple]) -> pd.DataFrame:
    # dtype=object keeps a null tracked value None instead of pandas turning it into NaN.
    differences = pd.DataFrame(found, columns=COLUMNS, dtype=object).astype({"cut": "int64", "bar_number": "int64"})
    differences["timestamp"] = pd.to_datetime(differences.timestamp, utc=True)
    differences = differences.sort_values(["bar_number", "cut"], kind="stable")
    return differences.reset_index(drop=True)
