"""The whole-notebook look-ahead check: the notebook runs again, all of it, on data cut short.

Checking only the strategy class misses a leak in a pandas cell (``signal = close.shift(-5) > close``
read in ``next()``). So the check runs the notebook through papermill once on all its data (its own
run, registered like ``farm backtest``'s), then again with every ``fk.data`` source cut at a few
timestamps (:mod:`farmkit.data.window`, set by a cell added first), and compares the decisions and
tracked values of each cut run's first ``fk.backtest`` with the full run's, bar by bar, on the bars
at or before the cut. While the cells run, the values of the notebook's own Series and DataFrames up
to the cut are summed up after every cell (:mod:`farmkit.research.lookahead_probe`): the first cell
whose values differ, and the known leak patterns in the cells' source
(:mod:`farmkit.research.leak_patterns`), name the cell that most likely leaks.

The recursive check runs it again with the data's *start* cut later (the first quarter of the bars
dropped) and compares, after a warm-up allowance, the bars both runs have: tracked values within a
relative 1e-6, and decisions from the first bar on which both runs hold the same positions (a
position carried in from the dropped bars changes later decisions with no fault of the indicators).
A difference there means the strategy depends on how much history came before (an indicator seeded
on the first bar, a ``cumsum`` or ``expanding`` statistic from the start); it is reported on its own,
not as look-ahead. The allowance is ``max(100, 10 × the strategy's warm-up)`` bars: an EMA's seed
weighs less than 1e-6 after that many bars of the usual periods.

The verdict (``passed`` or ``failed``) is written on the full run's ``lookahead`` column, and a
failed strategy version is withdrawn from the leaderboards. The check's own runs are in segment
``lookahead`` and never reach a board or a family of trials.

>>> report = fk.check_lookahead("notebooks/strategies/sma_crossover.ipynb", cuts=3, days=5)
>>> report.ok, report.first_bar, report.cell
"""

from __future__ import annotations

import html
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from farmkit.fmel.stores import open_store
from farmkit.research import lookahead_probe as probe
from farmkit.research.leak_patterns import leak_patterns
from farmkit.research.lookahead_report import (
    CHECK_SEGMENT,
    LookaheadError,
    LookaheadReport,
    _compare,
    _differences,
    _show,
)
from farmkit.settings import Settings

log = logging.getLogger("farmkit.research.lookahead")

RECURSIVE_REL_TOL = 1e-6
ALLOWANCE_BARS = 100        # the least warm-up allowance of the recursive check
ALLOWANCE_FACTOR = 10       # ... and per bar of the strategy's own warm-up (backtrader's minimum period)
_FIRST_CELL = f"""{probe.MARK}: cut the data before the notebook's own cells run
import farmkit.research.lookahead_probe as _farm_probe
_farm_probe.start(**%r)
"""
_LAST_CELL = f"""{probe.MARK}: what the probe found
_farm_probe.show()
"""


@dataclass(frozen=True)
class LeakCell:
    """The cell that most likely leaks: its number among the notebook's code cells (1-based), its first
    source line, how sure the check is (``high``, ``medium``, ``low``) and why."""

    number: int
    first_line: str
    confidence: str
    reason: str

    def __str__(self) -> str:
        return f"code cell {self.number} ({self.first_line!r}), {self.confidence} confidence: {self.reason}"


@dataclass(frozen=True)
class NotebookReport:
    """What :func:`check_notebook` found: ``lookahead`` compares the cut runs with the full run,
    ``recursive`` (None when not asked for) the runs with a later start; ``cell`` is the likely cell."""

    notebook: str
    lookahead: LookaheadReport
    recursive: LookaheadReport | None
    cell: LeakCell | None
    cut_timestamps: tuple
    start_timestamps: tuple
    allowance: int

    @property
    def ok(self) -> bool:
        return self.lookahead.ok

    @property
    def recursive_ok(self) -> bool:
        return self.recursive is None or self.recursive.ok

    @property
    def strategy(self) -> str:
        return self.lookahead.strategy

    @property
    def first_bar(self) -> int | None:
        return self.lookahead.first_bar

    @property
    def first_timestamp(self):
        return self.lookahead.first_timestamp

    @property
    def differences(self) -> pd.DataFrame:
        return self.lookahead.differences

    @property
    def full_run_id(self) -> str:
        return self.lookahead.full_run_id

    @property
    def largest_difference(self) -> float | None:
        """The largest absolute difference of a numeric value over all look-ahead differences (None: none numeric)."""
        return _largest(self.differences)

    def __str__(self) -> str:
        lines = [str(self.lookahead)]
        if not self.ok:
            if self.cell is not None:
                lines.append(f"Likely cell: {self.cell}.")
            if self.largest_difference is not None:
                lines.append(f"Largest difference: {self.largest_difference:.6g}.")
        if self.recursive is not None:
            lines.append(self._recursive_text())
        return "\n".join(lines)

    def _recursive_text(self) -> str:
        rec = self.recursive
        dropped = ", ".join(map(str, rec.cuts)) or "no"
        if not rec.cuts:
            return "Warm-up: not checked (too few bars for a later start and the allowance)."
        if rec.ok:
            return (f"Warm-up: no dependence found; with the first {dropped} bars dropped, tracked values and "
                    f"decisions match after an allowance of {self.allowance} bars.")
        first = rec.differences.iloc[0]
        return (f"Warm-up dependent: at bar {first.bar_number} ({first.timestamp}) {first.field} is "
                f"{_show(first.full_value)} with all the history and {_show(first.truncated_value)} with the "
                f"first {first.cut} bars dropped, after an allowance of {self.allowance} bars; "
                f"{len(rec.differences)} difference(s). This is not look-ahead: the strategy depends on how "
                "much history came before (report.recursive.differences lists them).")

    def _repr_html_(self) -> str:
        table = "" if self.ok else self.differences.head(20).to_html(index=False)
        body = "<br>".join(html.escape(line) for line in str(self).splitlines())
        return f"<p><b>{'OK' if self.ok else 'Look-ahead'}</b>: {body}</p>{table}"

    def to_dict(self) -> dict:
        out = self.lookahead.to_dict()
        out.update(notebook=self.notebook, message=str(self), recursive_ok=self.recursive_ok,
                   cell=None if self.cell is None else self.cell.__dict__,
                   largest_difference=self.largest_difference,
                   cut_timestamps=[str(t) for t in self.cut_timestamps],
                   start_timestamps=[str(t) for t in self.start_timestamps], allowance=self.allowance)
        return out

    def raise_if_leaky(self) -> NotebookReport:
        """Raise :class:`LookaheadError` with the report's message if the notebook looks ahead."""
        if not self.ok:
            raise LookaheadError(str(self))
        return self


def check_notebook(path, params: dict | None = None, *, cuts: int = 3, recursive: bool = True, starts: int = 1,
                   settings: Settings | None = None, kernel=None) -> NotebookReport:
    """Run a strategy notebook on all its data and on its data cut at ``cuts`` timestamps (and, with
    ``recursive``, started later at ``starts`` points), and report where its first backtest's decisions
    or tracked values differ, and the cell that most likely leaks. ``kernel`` (a reused
    ``notebooks._Kernel`` started in the notebook's folder) saves starting one per check.

    >>> report = check_notebook("notebooks/strategies/sma_crossover.ipynb", {"days": 5})
    >>> print(report)
    """
    from farmkit.research import notebooks

    import nbformat   # here: importing it costs ~2 s (jsonschema), which `import farmkit` must not pay

    path = Path(path).absolute()
    params = notebooks.coerce(dict(params or {}), notebooks.parameters(path), path)
    settings = (settings or Settings.from_env()).replace(run_id=None)
    store = open_store(settings.store)
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    own = kernel is None
    if own:
        env = {k: v for k, v in os.environ.items() if k != "FARM_RUN_ID"}
        env.update(FARM_HOME=str(settings.home), FARM_STORE=settings.store, FARM_PROGRESS="off",
                   FARM_FIGURE_IMAGES="off")   # the probes' notebooks are checked, not shared
        kernel = notebooks._Kernel(path.parent, env)
    run = _Runner(kernel, path, params, store)
    try:
        row, seen = run(cuts=cuts, starts=starts if recursive else 0)
        if row["status"] != "done":
            raise notebooks.NotebookError(f"{path} does not run on all its data, so it cannot be checked: "
                                          f"{row['error']}", run_id=row["run_id"])
        run_id = row["run_id"]
        full = _fmel(store, run_id)
        if full.empty:
            raise LookaheadError(f"{path}: the notebook ran no fk.backtest, so there is nothing to check")
        if not seen["cuts"]:
            raise LookaheadError(f"{path}: the notebook loads no bars through fk.data (synthetic, load, alpaca), "
                                 "or too few to cut, so the check cannot cut its data; load them with fk.data")
        strategy = (store.runs.get(run_id) or {}).get("strategy") or path.stem
        report = _lookahead(run, full, seen, cells, strategy, run_id)
        allowance = ALLOWANCE_BARS
        recursion = None
        if recursive:
            warmup = int((store.runs.get(run_id) or {}).get("warmup_bars") or 0)
            allowance = max(ALLOWANCE_BARS, ALLOWANCE_FACTOR * warmup)
            recursion = _recursive(run, full, seen, strategy, run_id, allowance)
    finally:
        if own:
            kernel.shutdown()
    _verdict(settings, store, run_id, report.lookahead.ok)
    return NotebookReport(str(path), report.lookahead, recursion, report.cell,
                          tuple(pd.Timestamp(t) for t in seen["cuts"]),
                          tuple(pd.Timestamp(t) for t in seen["starts"]), allowance)


@dataclass(frozen=True)
class _Found:
    lookahead: LookaheadReport
    cell: LeakCell | None


class _Runner:
    """Runs copies of one notebook, each with the probe's first and last cells, in one reused kernel."""

    def __init__(self, kernel, path: Path, params: dict, store):
        self.kernel, self.path, self.params, self.store = kernel, path, params, store

    def __call__(self, **start) -> tuple[dict, dict]:
        import nbformat

        from farmkit.research import notebooks

        nb = nbformat.read(self.path, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell(_FIRST_CELL % (start,)))
        nb.cells.append(nbformat.v4.new_code_cell(_LAST_CELL))
        # Next to the original, so the notebook's relative paths still resolve.
        copy = self.path.with_name(f".{self.path.stem}.lookahead-{uuid.uuid4().hex[:6]}.ipynb")
        nbformat.write(nb, copy)
        try:
            row = notebooks._warm_trial(self.kernel, copy, self.params, self.store, None)
        finally:
            copy.unlink(missing_ok=True)
        if row["status"] == "interrupted":
            raise KeyboardInterrupt
        self.store.runs.upsert(row["run_id"], notebook=str(self.path))
        found = {"cells": [], "backtests": [], "cuts": [], "starts": []}
        output = self.store.run_dir(row["run_id"]) / "notebook.ipynb"
        if output.exists():
            for out in nbformat.read(output, as_version=4).cells[-1].get("outputs", []):
                found.update(out.get("data", {}).get(probe.MIME, {}))
        if start.get("check_run"):
            for run_id in dict.fromkeys([row["run_id"], *found["backtests"]]):
                self.store.runs.upsert(run_id, segment=CHECK_SEGMENT, notebook=str(self.path))
        return row, found


def _lookahead(run: _Runner, full: pd.DataFrame, seen: dict, cells: list[str], strategy: str, run_id: str) -> _Found:
    times = pd.to_datetime(full.timestamp, utc=True)
    found, counts, run_ids, diverged, failed = [], [], [], [], []
    for stamp in map(pd.Timestamp, seen["cuts"]):
        row, cut = run(until=stamp.isoformat(), check_run=True)
        n = int((times <= stamp).sum())
        counts.append(n)
        run_ids.append(row["run_id"])
        records = _fmel(run.store, row["run_id"])
        if row["status"] != "done":
            # Failing only when the data is cut (indexing a bar past the end) is a look-ahead too.
            error = (run.store.runs.get(row["run_id"]) or {}).get("error") or row["error"] or ""
            bar = (run.store.runs.get(row["run_id"]) or {}).get("failed_bar")
            bar = int(bar) if bar is not None and not pd.isna(bar) else max(n - 1, 0)
            found.append((n, bar, full.timestamp.iloc[min(bar, len(full) - 1)], "error", None,
                          str(row["error"]).split("\n")[0]))
            failed.append(error.partition("--- cell source ---\n")[2].strip())
        if not records.empty:
            found.extend(_compare(full, _aligned(full, records[pd.to_datetime(records.timestamp, utc=True) <= stamp]), n))
        diverged.append(_first_divergence(seen["cells"], cut["cells"], stamp))
    report = LookaheadReport(strategy, len(full), tuple(counts), _differences(found), run_id, tuple(run_ids))
    cell = None if report.ok else _likely_cell(cells, seen["cells"], diverged, failed, strategy)
    return _Found(report, cell)


def _recursive(run: _Runner, full: pd.DataFrame, seen: dict, strategy: str, run_id: str,
               allowance: int) -> LookaheadReport:
    times = pd.to_datetime(full.timestamp, utc=True)
    found, dropped, run_ids = [], [], []
    for stamp in map(pd.Timestamp, seen["starts"]):
        k = int((times < stamp).sum())
        if k + allowance >= len(full):
            continue
        row, _ = run(start=stamp.isoformat(), check_run=True, probe=False)
        dropped.append(k)
        run_ids.append(row["run_id"])
        if row["status"] != "done":
            found.append((k, k, full.timestamp.iloc[k], "error", None, str(row["error"]).split("\n")[0]))
        records = _aligned(full, _fmel(run.store, row["run_id"]))
        records = records[records.bar_number >= k + allowance]
        if records.empty:
            continue
        both = records[["bar_number", "strategy_state"]].merge(full[["bar_number", "strategy_state"]],
                                                               on="bar_number", suffixes=("", "_full"))
        same = [_positions(a) == _positions(b) for a, b in zip(both.strategy_state, both.strategy_state_full)]
        synced = both.bar_number[pd.Series(same, index=both.index)].min() if any(same) else math.inf
        for item in _compare(full, records, k, rel_tol=RECURSIVE_REL_TOL):
            if item[3] != "decisions" or item[1] >= synced:
                found.append(item)
    return LookaheadReport(strategy, len(full), tuple(dropped), _differences(found), run_id, tuple(run_ids))


def _positions(text) -> dict:
    import json
    return (json.loads(text) or {}).get("positions") or {} if text else {}


def _fmel(store, run_id: str) -> pd.DataFrame:
    try:
        return store.fmel(run_id)
    except Exception:  # noqa: BLE001 - a run that failed before its first bar has no FMEL to read
        return pd.DataFrame(columns=["bar_number", "timestamp", "decisions", "strategy_state"])


def _aligned(full: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
    """``part``'s records numbered as the full run's bars of the same timestamps (a later start
    shifts bar numbers); bars the full run does not have are left out."""
    if part.empty:
        return part
    numbers = full[["timestamp", "bar_number"]]
    return part.drop(columns="bar_number").merge(numbers, on="timestamp", how="inner")


def _first_divergence(full_cells: list[dict], cut_cells: list[dict], stamp: pd.Timestamp):
    """(position, source, names) of the first executed cell whose values up to ``stamp`` differ, or None."""
    key = stamp.isoformat()
    for i, (mine, theirs) in enumerate(zip(full_cells, cut_cells)):
        a, b = mine["summaries"].get(key, {}), theirs["summaries"].get(key, {})
        names = [n for n in a if n in b and not _close(a[n], b[n])]
        if names:
            return i, theirs["source"], names
    return None


def _close(a: list, b: list) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) for x, y in zip(a, b))


def _likely_cell(cells: list[str], executed: list[dict], diverged: list, failed: list[str],
                 strategy: str) -> LeakCell | None:
    def number(source: str) -> int | None:
        for i, text in enumerate(cells, 1):
            if text.strip() == source.strip():
                return i
        return None

    def first_line(n: int) -> str:
        return next((line.strip() for line in cells[n - 1].splitlines() if line.strip()), "")

    patterns = {i: leak_patterns(text) for i, text in enumerate(cells, 1)}
    hits = [d for d in diverged if d is not None]
    if hits:
        _, source, names = min(hits, key=lambda d: d[0])
        n = number(source)
        if n is not None:
            shown = ", ".join(names[:3])
            if patterns[n]:
                kinds = "; ".join(f"{p.kind} in line {p.line} ({p.text})" for p in patterns[n][:2])
                return LeakCell(n, first_line(n), "high", f"values computed from the data first differ here "
                                f"({shown}) and its source has a known leak pattern: {kinds}")
            return LeakCell(n, first_line(n), "medium", f"values computed from the data first differ here "
                            f"({shown}); no known leak pattern in its source")
    for source in failed:
        n = number(source) if source else None
        if n is not None:
            return LeakCell(n, first_line(n), "medium", "it fails when the data is cut short")
    flagged = [n for n, found in patterns.items() if found]
    defines = next((n for n, text in enumerate(cells, 1) if f"class {strategy}(" in text), None)
    if defines is not None and patterns.get(defines):
        return LeakCell(defines, first_line(defines), "medium", "it defines the strategy, and its source has a "
                        f"known leak pattern: {patterns[defines][0].kind} in line {patterns[defines][0].line}")
    if flagged:
        p = patterns[flagged[0]][0]
        return LeakCell(flagged[0], first_line(flagged[0]), "low", f"the first cell with a known leak pattern "
                        f"({p.kind} in line {p.line}); the notebook's own Series and DataFrames agree on cut data")
    if defines is not None:
        return LeakCell(defines, first_line(defines), "medium", "the notebook's Series and DataFrames agree on cut "
                        "data, so the strategy class defined here reads ahead itself (e.g. data.close[1] or close(1))")
    return None


def _largest(differences: pd.DataFrame) -> float | None:
    sizes = [abs(float(a) - float(b)) for a, b in zip(differences.full_value, differences.truncated_value)
             if isinstance(a, (int, float)) and isinstance(b, (int, float))
             and not isinstance(a, bool) and not isinstance(b, bool)]
    return max(sizes) if sizes else None


def _verdict(settings: Settings, store, run_id: str, ok: bool) -> None:
    """The verdict on the notebook's own run; a failed version leaves the leaderboards (and
    ``leaderboard.publish`` refuses it from then on, reading the verdict from the registry)."""
    store.runs.upsert(run_id, lookahead="passed" if ok else "failed")
    if ok or settings.redis == "off":   # no board to take it off
        return
    from farmkit import leaderboard
    row = store.runs.get(run_id) or {}
    try:
        leaderboard.withdraw(settings, strategy=row.get("strategy"), code_hash=row.get("code_hash"),
                             family=row.get("family"), store=store)
    except Exception as exc:  # noqa: BLE001 - the board is a view: the registry's verdict stands without it
        log.warning("look-ahead: could not withdraw %s from the leaderboards (%s: %s); the registry marks "
                    "run %s failed, and fk.leaderboard.rebuild() leaves the version out",
                    row.get("strategy"), type(exc).__name__, exc, run_id)
