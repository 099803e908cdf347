"""The kernel side of the whole-notebook look-ahead check (see :func:`farmkit.research.lookahead.check_notebook`).

The check runs copies of a notebook with a cell added first and one added last. The first calls
:func:`start`: it sets the data window (:mod:`farmkit.data.window`) so every ``fk.data`` source
returns bars only up to the cut (or from a later start), and it watches the notebook's cells: after
each one, every pandas Series or DataFrame with a DatetimeIndex in the notebook's namespace (and
each frame of a dict of them, such as ``Bars``) is summed up over its rows at or before each cut
timestamp. The last cell calls :func:`show`, which displays what was found as one JSON output that
the check reads back from the executed notebook. Same values up to a cut, same summaries: the first
cell whose summaries differ between the full and a cut run is where values start to use the future.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from farmkit.data import window

MIME = "application/vnd.farm.lookahead+json"
MARK = "# farm check-lookahead"     # the first line of the cells the check adds

_state: dict = {}


def start(*, until=None, start=None, cuts: int = 0, starts: int = 0, check_run: bool = False,
          probe: bool = True) -> None:
    """Cut the data (``until``, ``start``: ISO timestamps or None) and watch the cells that follow.
    A run with no window chooses ``cuts`` cut and ``starts`` start timestamps from the data the
    notebook loads. ``check_run``: the run is the check's own, kept off the boards and out of its
    strategy's family of trials."""
    window.limit(start=start, until=until)
    _state.clear()
    _state.update(until=window.current().until, cuts=cuts, starts=starts, probe=probe, cells=[], clock=(0, None))
    if check_run:
        os.environ["FARM_REDIS"] = "off"
        _mark_check_run()
    from IPython import get_ipython
    events = get_ipython().events
    if _after_cell not in events.callbacks["post_run_cell"]:   # once per kernel: kernels are reused
        events.register("post_run_cell", _after_cell)


def show() -> None:
    """Display the findings of this run (the check reads them from the executed notebook)."""
    from IPython import get_ipython
    from IPython.display import display

    from farmkit.result import BacktestResult
    namespace = get_ipython().user_ns
    runs = [v.run_id for v in list(namespace.values()) if isinstance(v, BacktestResult)]
    clock = _clock()
    cuts = _cut_stamps(clock, _state.get("cuts", 0), _warmup(runs))
    display({MIME: {"cells": _state.get("cells", []), "backtests": runs,
                    "cuts": [t.isoformat() for t in cuts],
                    "starts": [t.isoformat() for t in _start_stamps(clock, _state.get("starts", 0))]}}, raw=True)


def _mark_check_run() -> None:
    from farmkit.fmel.stores import open_store
    from farmkit.research.lookahead_report import CHECK_SEGMENT
    from farmkit.settings import Settings
    settings = Settings.from_env()
    if settings.run_id:   # registered as queued by the check; its first fk.backtest takes the id
        open_store(settings.store).runs.upsert(settings.run_id, segment=CHECK_SEGMENT)


def _after_cell(result) -> None:
    source = getattr(getattr(result, "info", None), "raw_cell", "") or ""
    if not _state or source.startswith(MARK):
        return
    stamps = []
    if _state["probe"]:
        stamps = [_state["until"]] if _state["until"] is not None else _cut_stamps(_clock(), _state["cuts"])
    from IPython import get_ipython
    namespace = get_ipython().user_ns
    summaries: dict[str, dict] = {t.isoformat(): {} for t in stamps}
    for name, value in list(namespace.items()):
        if name.startswith("_"):
            continue
        for label, frame in _frames(name, value):
            for t in stamps:
                summaries[t.isoformat()][label] = _summary(frame, t)
    _state["cells"].append({"source": source, "summaries": summaries})


def _frames(name: str, value):
    if isinstance(value, (pd.Series, pd.DataFrame)):
        if isinstance(value.index, pd.DatetimeIndex):
            yield name, value
    elif isinstance(value, dict) and len(value) <= 1000:
        for key, item in list(value.items()):
            if isinstance(item, (pd.Series, pd.DataFrame)) and isinstance(item.index, pd.DatetimeIndex):
                yield f"{name}[{key!r}]", item


def _summary(frame, until: pd.Timestamp) -> list[float]:
    """Rows at or before ``until``: their count, then per numeric column the count of finite values,
    their sum and their sum weighted by position (which tells a shifted series from the same values)."""
    index = frame.index
    cut = until if index.tz is not None else until.tz_convert("UTC").tz_localize(None)
    part = frame[index <= cut]
    columns = part.to_frame() if isinstance(part, pd.Series) else part
    out = [float(len(part))]
    weights = np.arange(1, len(part) + 1, dtype="float64")
    for i in range(columns.shape[1]):
        column = columns.iloc[:, i]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            continue
        values = pd.to_numeric(column, errors="coerce").to_numpy("float64", na_value=np.nan)
        finite = np.isfinite(values)
        kept = np.where(finite, values, 0.0)
        out += [float(finite.sum()), float(kept.sum()), float((kept * weights).sum())]
    return out


def _clock() -> pd.DatetimeIndex | None:
    # The union of every timestamp the notebook's fk.data calls returned; cached until another call.
    seen = window.seen()
    count, clock = _state.get("clock", (0, None))
    if count != len(seen):
        clock = None
        for index in seen:
            clock = index if clock is None else clock.union(index)
        _state["clock"] = (len(seen), clock)
    return clock


def _warmup(run_ids: list[str]) -> int:
    """The longest warm-up (bars before the first next()) of this run's backtests."""
    from farmkit.fmel.stores import open_store
    from farmkit.settings import Settings
    if not run_ids:
        return 0
    store = open_store(Settings.from_env().store)
    found = [(store.runs.get(run_id) or {}).get("warmup_bars") for run_id in run_ids]
    return max((int(w) for w in found if w is not None and not pd.isna(w)), default=0)


def _cut_stamps(clock, cuts: int, warmup: int = 0) -> list[pd.Timestamp]:
    from farmkit.research.lookahead_report import _cut_points
    if clock is None or not cuts or not len(clock):
        return []
    frames = {i: pd.DataFrame(index=index) for i, index in enumerate(window.seen()) if len(index)}
    return [clock[n - 1] for n in _cut_points(frames, clock, cuts, warmup)]


def _start_stamps(clock, starts: int) -> list[pd.Timestamp]:
    # Drop the first 15% to 35% of the bars: enough for the warm-up allowance to pass within the rest.
    if clock is None or not starts or not len(clock):
        return []
    points = [0.25] if starts == 1 else np.linspace(0.15, 0.35, starts)
    return [clock[k] for k in sorted({int(p * len(clock)) for p in points}) if 0 < k < len(clock)]
