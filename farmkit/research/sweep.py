"""Parameter sweeps: one full, FMEL-recorded backtest per grid point, in parallel, deflated at the end.

>>> from farmkit.research.sweep import sweep
>>> res = sweep(SmaCross, bars, {"fast": [5, 10, 20], "slow": [30, 60]}, workers=4)
>>> res.table.sort_values("dsr").tail(); res.best("sharpe"); res.plot("sharpe")
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial

import backtrader as bt
import pandas as pd

from farmkit.research import trials
from farmkit.data.bars import Bars, to_bars
from farmkit.research.backtest import backtest
from farmkit.kernel import check_params, new_run_id
from farmkit.errors import ParameterError
from farmkit.fmel.stores import open_store
from farmkit.settings import Settings
from farmkit.research.split import (SIDE_BY_SIDE, WalkForward, best_trial, check_select, run_out_of_sample, run_split,
                           split_windows, with_warmup)

_HONEST = ["sharpe_daily", "skew", "kurtosis", "days", "psr", "dsr", "min_track_record_days"]


@dataclass
class SweepResult:
    """The trials of one sweep: ``table`` has one row per trial (grid parameters, ``run_id``,
    ``status``, ``error``, the metrics of ``fk.backtest`` and ``psr``/``dsr`` deflated over this
    sweep's done trials). ``interrupted`` is True when the sweep was stopped with Ctrl-C.

    With a ``split``, ``table`` holds the in-sample trials (a ``segment`` column says which window;
    DSR is deflated within each window), ``oos`` one row per window with the chosen parameters and
    ``is_*``/``oos_*`` figures side by side, ``oos_equity`` the out-of-sample equity of all windows
    chained, and ``oos_summary`` its metrics."""

    sweep_id: str
    strategy: str
    params: list[str]
    table: pd.DataFrame
    interrupted: bool = False
    store: object = field(default=None, repr=False)
    oos: pd.DataFrame | None = None
    oos_equity: pd.Series | None = field(default=None, repr=False)
    oos_summary: dict | None = None

    def best(self, metric: str = "sharpe") -> pd.Series:
        """The done trial with the highest ``metric``, e.g. ``res.best("dsr").run_id``."""
        return best_trial(self.table, metric, self.sweep_id)

    def summary(self) -> pd.DataFrame:
        """In-sample and out-of-sample figures of each window side by side, for reading.

        >>> res.summary()   # columns (sharpe, in-sample), (sharpe, out-of-sample), ...
        """
        if self.oos is None:
            raise ValueError(f"sweep {self.sweep_id} was run without split=; its trials are in .table")
        frame = self.oos.set_index("window")
        columns = {(p, ""): frame[p] for p in self.params}
        for name in SIDE_BY_SIDE:
            columns[(name, "in-sample")] = frame[f"is_{name}"]
            columns[(name, "out-of-sample")] = frame[f"oos_{name}"]
        columns[("period", "out-of-sample")] = (frame["oos_start"].dt.strftime("%Y-%m-%d %H:%M") + " → "
                                                + frame["oos_end"].dt.strftime("%Y-%m-%d %H:%M"))
        return pd.DataFrame(columns)

    def plot(self, metric: str = "sharpe"):
        """A heatmap of ``metric`` over two grid parameters, bars over one, parallel coordinates
        over more. Failed trials are left out."""
        import plotly.graph_objects as go

        done = self.table[self.table["status"] == "done"]
        title = f"{self.strategy} sweep {self.sweep_id}: {metric}"
        if len(self.params) == 1:
            (p,) = self.params
            fig = go.Figure(go.Bar(x=done[p].astype(str), y=done[metric], name=metric))
            fig.update_layout(xaxis_title=p, yaxis_title=metric)
        elif len(self.params) == 2:
            y, x = self.params
            grid = done.pivot_table(index=y, columns=x, values=metric, aggfunc="first")
            fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=[str(v) for v in grid.columns],
                                       y=[str(v) for v in grid.index], colorbar_title=metric))
            fig.update_layout(xaxis_title=x, yaxis_title=y)
        else:
            fig = go.Figure(go.Parcoords(line=dict(color=done[metric], colorscale="Viridis", showscale=True),
                                         dimensions=[_dimension(done[p], p) for p in self.params]
                                         + [dict(label=metric, values=done[metric])]))
        return fig.update_layout(title=title)

    def _repr_html_(self) -> str:
        state = " (interrupted)" if self.interrupted else ""
        oos = "" if self.oos is None else "<p>Out of sample</p>" + self.summary().to_html() + "<p>In sample</p>"
        return f"<b>{self.strategy}</b> sweep <code>{self.sweep_id}</code>{state}" + oos + self.table.to_html()




def _dimension(values: pd.Series, label: str) -> dict:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return dict(label=label, values=values)
    # Parallel coordinates need numbers: strings and booleans become category codes with their names.
    codes, names = pd.factorize(values.astype(str), sort=True)
    return dict(label=label, values=codes, tickvals=list(range(len(names))), ticktext=list(names))


def grid_points(strategy: type, grid: dict, fixed: dict) -> list[dict]:
    """Every combination of the grid, each checked like ``fk.backtest`` checks its parameters."""
    if not grid:
        raise ParameterError("the grid is empty; give lists of values, e.g. {'fast': [5, 10]}, "
                             "or use fk.backtest for a single run")
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ParameterError(f"grid[{name!r}] must be a list of values, got {values!r}; "
                                 f"write {name!r}: [{values!r}]")
    grid = {name: list(values) for name, values in grid.items()}  # ranges and generators too
    empty = [name for name, values in grid.items() if not values]
    if empty:
        raise ParameterError(f"grid[{empty[0]!r}] is empty; give at least one value")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ParameterError(f"{', '.join(both)} given both in the grid and as a fixed parameter")
    names = list(grid)
    points = [dict(zip(names, combo)) for combo in itertools.product(*grid.values())]
    for point in points:
        check_params(strategy, {**fixed, **point})
    return points


# What each worker needs for every trial: set once per process by the pool initializer.
_JOB: dict = {}


def _init_worker(job: dict, in_pool: bool) -> None:
    if in_pool:
        # Ctrl-C reaches the whole process group; only the parent decides what to do with it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A store of its own: nothing opened before the fork is shared between processes.
        job = {**job, "store": open_store(job["settings"].store)}
    _JOB.clear()
    _JOB.update(job)


def _run_trial(params: dict) -> tuple[dict, str | None, dict, str | None]:
    """One trial; returns only plain values so that memory does not grow with the sweep."""
    job = _JOB
    run_id, metrics, error = None, {}, None
    try:
        res = backtest(job["strategy"], job["bars"], cash=job["cash"], commission=job["commission"],
                       settings=job["settings"], store=job["store"], progress="off", **job["fixed"], **params)
        run_id, metrics = res.run_id, {**res.metrics, **trials.daily_stats(res.equity)}
    except Exception as exc:  # recorded in the table: one bad grid point must not end the sweep
        run_id = getattr(exc, "run_id", None)
        error = f"{type(exc).__name__}: {exc}"
    if run_id is not None:
        job["store"].runs.upsert(run_id, sweep_id=job["sweep_id"], segment=job["segment"])
    return params, run_id, metrics, error


def _pool(workers: int, job: dict) -> ProcessPoolExecutor:
    # fork, not spawn: a strategy class defined in a notebook lives in __main__, which a spawned
    # worker cannot import; a forked one inherits it, and the bars, without pickling either.
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(job, True))


def sweep(strategy: type, data, grid: dict[str, list], *, workers: int = 1, cash: float = 100_000.0,
          commission: float = 0.0, settings: Settings | None = None, progress: bool | None = None,
          sweep_id: str | None = None, split=None, warmup_bars: int = 0, select: str = "sharpe",
          **fixed) -> SweepResult:
    """Backtest ``strategy`` at every point of ``grid`` (all combinations), each as a full
    ``fk.backtest`` registered under one ``sweep_id``. Extra keyword arguments are parameters that
    stay fixed. Failing trials are recorded in the table; Ctrl-C returns the finished trials.

    With ``split`` (a fraction such as 0.7, a date, or ``WalkForward(windows=4)``) the grid runs on
    the in-sample bars only, the trial with the highest ``select`` metric is run out of sample
    (with ``warmup_bars`` bars before the out-of-sample start to warm its indicators up, left out
    of its figures), and ``res.oos`` puts both sides next to each other; see :mod:`farmkit.research.split`.

    >>> res = sweep(SmaCross, bars, {"fast": [5, 10], "slow": [30, 60]}, workers=2, commission=0.0005)
    >>> res.best("sharpe")
    >>> sweep(SmaCross, bars, {"fast": [5, 10]}, split=0.7, warmup_bars=60).summary()
    >>> sweep("notebooks/strategies/sma_crossover.ipynb", None, {"fast": [5, 10]}, workers=2)

    A notebook path runs the notebook once per grid point (it makes its own data from its
    parameters, so ``data`` must be None).
    """
    if isinstance(strategy, (str, Path)):
        return _notebook_sweep(Path(strategy), data, grid, workers=workers, settings=settings,
                               progress=progress, extra=dict(fixed, split=split, warmup_bars=warmup_bars))
    if not (isinstance(strategy, type) and issubclass(strategy, bt.Strategy)):
        raise TypeError(f"strategy must be a backtrader Strategy class or a notebook path, got {strategy!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    points = grid_points(strategy, grid, fixed)
    bars = to_bars(data)
    # Every split and warm-up mistake is found here, before the first run.
    windows = split_windows(bars, split) if split is not None else None
    if windows is not None:
        with_warmup(bars, windows[0], warmup_bars)
        check_select(select)
    elif warmup_bars:
        raise ParameterError("warmup_bars warms up out-of-sample runs; it needs split= (e.g. split=0.7)")
    settings = settings or Settings.from_env()
    # FARM_RUN_ID names one notebook run; trials in several processes must not race to claim it.
    trial_settings = settings.replace(run_id=None)
    sweep_id = sweep_id or new_run_id("sweep")
    store = open_store(settings.store)
    job = dict(strategy=strategy, bars=bars, cash=float(cash), commission=float(commission),
               settings=trial_settings, store=store, fixed=fixed, sweep_id=sweep_id, segment=None)
    show = progress if progress is not None else settings.progress != "off"
    bar = _progress_bar((len(points) + 1) * len(windows) if windows else len(points), strategy.__name__, show)
    result = SweepResult(sweep_id=sweep_id, strategy=strategy.__name__, params=list(grid), table=None,
                         store=store)
    try:
        if windows is None:
            result.table, result.interrupted = _run_grid(points, job, workers, bar)
        else:
            def run_grid(in_sample: Bars, segment: str) -> tuple[pd.DataFrame, bool]:
                return _run_grid(points, {**job, "bars": in_sample, "segment": segment}, workers, bar)

            run_oos = partial(run_out_of_sample, strategy, bars, warmup_bars=warmup_bars, sweep_id=sweep_id,
                              store=store, cash=float(cash), commission=float(commission),
                              settings=trial_settings, **fixed)
            done = run_split(windows, list(grid), run_grid=run_grid, run_oos=run_oos, select=select,
                             walk=isinstance(split, WalkForward), tick=bar.update if bar is not None else None)
            result.table, result.oos, result.interrupted = done.table, done.oos, done.interrupted
            if done.curve is not None:
                result.oos_equity = done.curve.equity
                result.oos_summary = {**done.curve.metrics(), "windows": done.windows}
    finally:
        if bar is not None:
            bar.close()
    return result


def _run_grid(points: list[dict], job: dict, workers: int, bar) -> tuple[pd.DataFrame, bool]:
    """Every grid point on ``job["bars"]``: the table of trials, and whether Ctrl-C stopped it."""
    rows: dict[int, tuple] = {}

    def collect(i: int, outcome: tuple) -> None:
        rows[i] = outcome
        _advance(bar, outcome)

    interrupted = False
    try:
        if workers == 1:
            _init_worker(job, in_pool=False)
            for i, point in enumerate(points):
                collect(i, _run_trial(point))
        else:
            _run_pool(points, min(workers, len(points)), job, collect)
    except KeyboardInterrupt:
        interrupted = True
    return _table([rows[i] for i in sorted(rows)], list(points[0])), interrupted


def _run_pool(points: list[dict], workers: int, job: dict, collect) -> None:
    pool = _pool(workers, job)
    futures = {pool.submit(_run_trial, point): i for i, point in enumerate(points)}
    collected = set()
    try:
        for future in as_completed(futures):
            collect(futures[future], future.result())
            collected.add(future)
    finally:
        # On Ctrl-C queued trials are dropped and running ones finish, so that no run is left
        # half-written in the registry; those that finished meanwhile are kept too.
        pool.shutdown(wait=True, cancel_futures=True)
        for future, i in futures.items():
            if future not in collected and future.done() and not future.cancelled() \
                    and future.exception() is None:
                collect(i, future.result())


def _progress_bar(total: int, label: str, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal
    return tqdm(total=total, desc=f"sweep {label}", unit="trial")


def _advance(bar, outcome) -> None:
    if bar is None:
        return
    sharpe = outcome[2].get("sharpe", math.nan)
    if not math.isnan(sharpe) and sharpe > getattr(bar, "best_sharpe", -math.inf):
        bar.best_sharpe = sharpe
        bar.set_postfix(best_sharpe=f"{sharpe:.2f}", refresh=False)
    bar.update(1)


def _table(outcomes: list[tuple], names: list[str]) -> pd.DataFrame:
    records = [{**{n: params[n] for n in names}, "run_id": run_id, "status": "failed" if error else "done",
                "error": error, **metrics} for params, run_id, metrics, error in outcomes]
    table = pd.DataFrame.from_records(records, columns=None if records else names + ["run_id", "status", "error"])
    for column in _HONEST[:4]:
        if column not in table.columns:
            table[column] = math.nan
    done = table["status"] == "done"
    n_trials, variance = trials.family_stats(table.loc[done, "sharpe_daily"])
    deflated = [trials.deflate(row, n_trials, variance) if ok else {}
                for ok, row in zip(done, table[_HONEST[:4]].to_dict("records"))]
    extra = pd.DataFrame.from_records(deflated, index=table.index, columns=_HONEST[4:])
    # Each run's own figures deflate against its whole family; here the sweep is the family in view.
    table = table.drop(columns=[c for c in (*_HONEST[4:], "trials") if c in table.columns])
    return pd.concat([table, extra.astype("float64")], axis=1)


def _notebook_sweep(path: Path, data, grid, *, workers, settings, progress, extra) -> SweepResult:
    from farmkit.research import notebooks

    if data is not None:
        raise ParameterError("a notebook makes its own data from its parameters: pass data=None "
                             "and put data choices (symbols, days, ...) in the grid")
    unsupported = sorted(k for k, v in extra.items() if v not in (None, 0))
    if unsupported:
        raise ParameterError(f"{', '.join(unsupported)} not supported for notebook sweeps; put fixed "
                             "values in the notebook's parameters cell, or sweep a Strategy class")
    settings = settings or Settings.from_env()
    sweep_id, table = notebooks.sweep(path, grid, workers=workers, settings=settings, progress=progress is not False)
    return SweepResult(sweep_id=sweep_id, strategy=path.stem, params=list(grid), table=table,
                       interrupted=bool(table.attrs.get("interrupted")), store=open_store(settings.store))
