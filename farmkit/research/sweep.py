"""Parameter sweeps: one full, FMEL-recorded backtest per trial, in parallel, deflated at the end.

Trials are every grid point (the default) or what Optuna's TPE sampler picks from a space
(``search="tpe"``; see :mod:`farmkit.research.search`). Each trial keeps its daily returns, so the
sweep prices its own overfitting: ``res.pbo`` is the Probability of Backtest Overfitting of picking
its best trial (:mod:`farmkit.research.overfit`).

>>> from farmkit.research.sweep import sweep
>>> res = sweep(SmaCross, bars, {"fast": [5, 10, 20], "slow": [30, 60]}, workers=4)
>>> res.table.sort_values("dsr").tail(); res.best("sharpe"); res.plot("sharpe"); res.pbo
>>> sweep(SmaCross, bars, {"fast": (3, 30), "slow": (20, 200)}, search="tpe", n_trials=40, seed=1,
...       constraints=lambda p: p["fast"] < p["slow"])
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import multiprocessing.connection
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import NamedTuple

import backtrader as bt
import pandas as pd

from farmkit import metrics as _metrics
from farmkit.research import overfit, trials
from farmkit.research.search import SEARCHES, TpeSearch
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
    chained, and ``oos_summary`` its metrics.

    ``returns`` holds the daily returns of every done trial (one column per ``run_id``), and ``pbo``
    the Probability of Backtest Overfitting of choosing the best of them (CSCV with up to 16
    blocks; None with fewer than two done trials or 8 days). With a split it is that of the
    in-sample trials; with walk-forward windows each window's is ``oos.is_pbo``."""

    sweep_id: str
    strategy: str
    params: list[str]
    table: pd.DataFrame
    interrupted: bool = False
    store: object = field(default=None, repr=False)
    oos: pd.DataFrame | None = None
    oos_equity: pd.Series | None = field(default=None, repr=False)
    oos_summary: dict | None = None
    returns: pd.DataFrame | None = field(default=None, repr=False)
    pbo: overfit.PBOResult | None = None

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
        columns[("pbo", "in-sample")] = frame["is_pbo"] if "is_pbo" in frame else math.nan
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
        return (f"<b>{self.strategy}</b> sweep <code>{self.sweep_id}</code>{state}<p>{self.overfitting()}</p>"
                + oos + self.table.to_html())

    def overfitting(self) -> str:
        """One line on what the search cost: trials, the best DSR, and the PBO.

        >>> res.overfitting()
        '12 trials; best DSR 0.412; PBO 0.63 (CSCV, 16 blocks): the in-sample best ranks ...'
        """
        done = self.table[self.table["status"] == "done"] if "status" in self.table else self.table
        dsr = pd.to_numeric(done.get("dsr", pd.Series(dtype="float64")), errors="coerce").max()
        text = f"{len(done)} trials; best DSR {dsr:.3f}" if pd.notna(dsr) else f"{len(done)} trials"
        if self.pbo is None:
            return text + "; PBO not measured (fewer than 2 done trials or 8 days)"
        return (text + f"; PBO {self.pbo.pbo:.2f} (CSCV, {self.pbo.n_splits} blocks): the in-sample best ranks "
                f"in the bottom half out of sample in {self.pbo.pbo:.0%} of the splits")




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


class Outcome(NamedTuple):
    """What one trial leaves for the sweep: plain values and its daily returns, not the result,
    so that memory does not grow with the sweep."""

    params: dict
    run_id: str | None
    metrics: dict
    error: str | None
    returns: pd.Series | None = None


def _run_trial(params: dict) -> Outcome:
    job = _JOB
    run_id, metrics, error, returns = None, {}, None, None
    try:
        res = backtest(job["strategy"], job["bars"], cash=job["cash"], commission=job["commission"],
                       settings=job["settings"], store=job["store"], progress="off", **job["fixed"], **params)
        run_id, metrics = res.run_id, {**res.metrics, **trials.daily_stats(res.equity)}
        returns = _metrics.daily_returns(res.equity)
    except Exception as exc:  # recorded in the table: one bad trial must not end the sweep
        run_id = getattr(exc, "run_id", None)
        error = f"{type(exc).__name__}: {exc}"
    if run_id is not None:
        job["store"].runs.upsert(run_id, sweep_id=job["sweep_id"], segment=job["segment"])
    return Outcome(params, run_id, metrics, error, returns)


def _context():
    # fork, not spawn: a strategy class defined in a notebook lives in __main__, which a spawned
    # worker cannot import; a forked one inherits it, and the bars, without pickling either.
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else multiprocessing.get_context()


class _Workers:
    """How the sweep's trials run in parallel: ``workers`` processes at a time, one forked process per
    trial. A process that dies (a crash in C code, the OOM killer) takes only its own trial with it:
    the other trials, and their runs in the registry, are not touched."""

    def __init__(self, workers: int, job: dict):
        self.workers, self.job = workers, job


def _isolated_trial(conn, job: dict, params: dict) -> None:
    _init_worker(job, True)
    try:
        conn.send(("done", _run_trial(params)))
    except KeyboardInterrupt:   # a trial stopped as by Ctrl-C: the sweep stops, as in one process
        conn.send(("interrupted", None))
    conn.close()


def _died(process) -> str:
    code = process.exitcode
    how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return f"the trial's process died ({how}) before it finished; its run is in the registry as killed"


def _run_isolated(points: list[tuple[int, dict]], workers: _Workers, collect) -> None:
    """Run each of ``points`` (index, parameters) in a process of its own, ``workers.workers`` at a
    time. On Ctrl-C (or a trial that raises KeyboardInterrupt) queued trials are dropped and running
    ones finish, so that no run is left half-written in the registry."""
    context = _context()
    interrupted = False
    queue, running = list(points), {}

    def start(i, params):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_isolated_trial, args=(send, workers.job, params), daemon=True)
        process.start()
        send.close()
        running[receive] = (i, params, process)

    def finish(conn):
        nonlocal interrupted
        i, params, process = running.pop(conn)
        try:
            how, outcome = conn.recv()
        except (EOFError, OSError):
            how, outcome = "died", None
        process.join()
        conn.close()
        if how == "interrupted":
            interrupted = True
        else:
            collect(i, outcome if outcome is not None else Outcome(params, None, {}, _died(process)))

    try:
        while (queue and not interrupted) or running:
            while queue and not interrupted and len(running) < workers.workers:
                start(*queue.pop(0))
            for conn in multiprocessing.connection.wait(list(running)):
                finish(conn)
    except KeyboardInterrupt:
        while running:      # the running trials finish (they ignore Ctrl-C); queued ones are dropped
            finish(next(iter(running)))
        raise
    if interrupted:
        raise KeyboardInterrupt


def sweep(strategy: type, data, grid: dict | None = None, *, search: str = "grid", n_trials: int | None = None,
          seed: int | None = None, constraints=None, workers: int = 1, cash: float = 100_000.0,
          commission: float = 0.0, settings: Settings | None = None, progress: bool | None = None,
          sweep_id: str | None = None, split=None, warmup_bars: int = 0, select: str = "sharpe",
          **fixed) -> SweepResult:
    """Backtest ``strategy`` at every point of ``grid`` (all combinations), each as a full
    ``fk.backtest`` registered under one ``sweep_id``. Extra keyword arguments are parameters that
    stay fixed. Failing trials are recorded in the table; Ctrl-C returns the finished trials.

    ``search="tpe"`` searches instead: ``grid`` is then a space (lists are choices, ``(lo, hi)``
    tuples or ``Int``/``Float`` from :mod:`farmkit.research.search` ranges) and Optuna's TPE sampler
    picks ``n_trials`` distinct points, maximizing ``select``, asked ``workers`` at a time; ``seed``
    makes it reproducible. ``constraints`` (a function of the parameters, or a list of them,
    returning True for a point to run) keep infeasible points from ever running: they are not
    trials, and neither is a point asked twice. Every trial run is registered and counted in the
    deflated Sharpe ratios, as in a grid.

    With ``split`` (a fraction such as 0.7, a date, or ``WalkForward(windows=4)``) the trials run on
    the in-sample bars only, the trial with the highest ``select`` metric is run out of sample
    (with ``warmup_bars`` bars before the out-of-sample start to warm its indicators up, left out
    of its figures), and ``res.oos`` puts both sides next to each other; see :mod:`farmkit.research.split`.
    Only the out-of-sample runs go on the leaderboard, with their out-of-sample figures.

    >>> res = sweep(SmaCross, bars, {"fast": [5, 10], "slow": [30, 60]}, workers=2, commission=0.0005)
    >>> res.best("sharpe"), res.pbo
    >>> sweep(SmaCross, bars, {"fast": [5, 10]}, split=0.7, warmup_bars=60).summary()
    >>> sweep(SmaCross, bars, {"fast": (3, 30), "slow": (20, 200)}, search="tpe", n_trials=40, seed=7,
    ...       constraints=lambda p: p["fast"] < p["slow"])
    >>> sweep("notebooks/strategies/sma_crossover.ipynb", None, {"fast": [5, 10]}, workers=2)

    A notebook path runs the notebook once per trial (it makes its own data from its parameters,
    so ``data`` must be None).
    """
    if search not in SEARCHES:
        raise ParameterError(f"search={search!r} is not a search; choose one of {', '.join(SEARCHES)}")
    if search == "grid" and (n_trials is not None or seed is not None or constraints is not None):
        raise ParameterError("n_trials, seed and constraints go with search='tpe'; a grid runs every point")
    if isinstance(strategy, (str, Path)):
        if data is not None:
            raise ParameterError("a notebook makes its own data from its parameters: pass data=None "
                                 "and put data choices (symbols, days, ...) in the grid")
        return notebook_sweep(strategy, grid, fixed=fixed, workers=workers, settings=settings, progress=progress,
                              search=search, n_trials=n_trials, seed=seed, constraints=constraints, select=select,
                              split=split, warmup_bars=warmup_bars)
    if not (isinstance(strategy, type) and issubclass(strategy, bt.Strategy)):
        raise TypeError(f"strategy must be a backtrader Strategy class or a notebook path, got {strategy!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    trial_plan = _trial_plan(strategy, grid, fixed, search, n_trials, seed, constraints)
    bars = to_bars(data)
    # Every split and warm-up mistake is found here, before the first run.
    windows = split_windows(bars, split) if split is not None else None
    if windows is not None:
        with_warmup(bars, windows[0], warmup_bars)
    elif warmup_bars:
        raise ParameterError("warmup_bars warms up out-of-sample runs; it needs split= (e.g. split=0.7)")
    check_select(select)
    settings = settings or Settings.from_env()
    # FARM_RUN_ID names one notebook run; trials in several processes must not race to claim it.
    trial_settings = settings.replace(run_id=None)
    if windows is not None:
        # In-sample figures are the choice, not the result: only out-of-sample runs go on a board.
        trial_settings = trial_settings.replace(redis="off")
    sweep_id = sweep_id or new_run_id("sweep")
    store = open_store(settings.store)
    job = dict(strategy=strategy, bars=bars, cash=float(cash), commission=float(commission),
               settings=trial_settings, store=store, fixed=fixed, sweep_id=sweep_id, segment=None, select=select)
    show = progress if progress is not None else settings.progress != "off"
    per_window = trial_plan.total
    bar = _progress_bar((per_window + 1) * len(windows) if windows else per_window, strategy.__name__, show)
    result = SweepResult(sweep_id=sweep_id, strategy=strategy.__name__, params=list(grid), table=None,
                         store=store)
    returns: list[pd.Series] = []
    try:
        if windows is None:
            result.table, result.interrupted, returns = _run_trials(trial_plan, job, workers, bar)
            result.pbo = _pbo(returns)
        else:
            pbos = {}

            def run_grid(in_sample: Bars, segment: str) -> tuple[pd.DataFrame, bool]:
                table, interrupted, window_returns = _run_trials(
                    trial_plan, {**job, "bars": in_sample, "segment": segment}, workers, bar)
                returns.extend(window_returns)
                pbos[segment] = _pbo(window_returns)
                return table, interrupted

            run_oos = partial(run_out_of_sample, strategy, bars, backtest=backtest, warmup_bars=warmup_bars,
                              sweep_id=sweep_id,
                              store=store, cash=float(cash), commission=float(commission),
                              settings=trial_settings, board=settings.replace(run_id=None), **fixed)
            done = run_split(windows, list(grid), run_grid=run_grid, run_oos=run_oos, select=select,
                             walk=isinstance(split, WalkForward), tick=bar.update if bar is not None else None)
            result.table, result.oos, result.interrupted = done.table, done.oos, done.interrupted
            if len(result.oos):
                prefix = "wf{}/" if isinstance(split, WalkForward) else ""
                result.oos["is_pbo"] = [getattr(pbos.get(prefix.format(w) + "in_sample"), "pbo", math.nan)
                                        for w in result.oos["window"]]
            if not isinstance(split, WalkForward):
                result.pbo = pbos.get("in_sample")
            if done.curve is not None:
                result.oos_equity = done.curve.equity
                result.oos_summary = {**done.curve.metrics(), "windows": done.windows}
    finally:
        if bar is not None:
            bar.close()
    result.returns = pd.concat(returns, axis=1) if returns else pd.DataFrame()
    return result


@dataclass(frozen=True)
class _TrialPlan:
    """The grid's points, or how to start a fresh TPE search (one per split window)."""

    points: list[dict] | None
    search: dict | None
    total: int

    def start(self) -> TpeSearch | None:
        return TpeSearch(**self.search) if self.search is not None else None


def _trial_plan(strategy: type, grid, fixed: dict, search: str, n_trials, seed, constraints) -> _TrialPlan:
    if search == "grid":
        points = grid_points(strategy, grid or {}, fixed)
        return _TrialPlan(points, None, len(points))
    if n_trials is None:
        raise ParameterError("search='tpe' needs n_trials=, e.g. n_trials=40")
    both = sorted(set(grid or {}) & set(fixed))
    if both:
        raise ParameterError(f"{', '.join(both)} given both in the space and as a fixed parameter")
    options = dict(space=grid or {}, n_trials=n_trials, seed=seed, constraints=constraints,
                   check=lambda point: check_params(strategy, {**fixed, **point}))
    TpeSearch(**options)   # every mistake in the space is found before the first run
    return _TrialPlan(None, options, int(n_trials))


def _run_trials(plan: _TrialPlan, job: dict, workers: int, bar) -> tuple[pd.DataFrame, bool, list[pd.Series]]:
    """Every trial of the plan on ``job["bars"]``: the table of trials, whether Ctrl-C stopped it, and
    the daily returns of the done trials (one series per trial, named by its run id)."""
    outcomes: dict[int, Outcome] = {}
    search = plan.start()
    points = plan.points if search is None else []

    def collect(i: int, outcome: Outcome) -> None:
        outcomes[i] = outcome
        _advance(bar, outcome)

    interrupted = False
    pool = None
    try:
        if workers == 1:
            _init_worker(job, in_pool=False)
        else:
            pool = _Workers(min(workers, plan.total), job)
        if search is None:
            _run_batch(points, 0, pool, collect)
        else:
            # Asked a batch of `workers` at a time and told back in order: the same seed and
            # workers give the same trials, however the pool's timing falls.
            while not search.finished:
                batch = search.ask(workers)
                _run_batch(batch, len(points), pool, collect)
                for i, point in enumerate(batch, start=len(points)):
                    outcome = outcomes[i]
                    search.tell(point, outcome.metrics.get(job["select"]) if outcome.error is None else None)
                points += batch
    except KeyboardInterrupt:
        interrupted = True
    names = list(points[0]) if points else list((plan.search or {}).get("space") or {})
    done = [outcomes[i] for i in sorted(outcomes)]
    returns = [o.returns.rename(o.run_id) for o in done if o.error is None and o.returns is not None]
    return _table(done, names), interrupted, returns


def _run_batch(points: list[dict], first: int, workers: _Workers | None, collect) -> None:
    """Run ``points`` (numbered from ``first``) in this process, or in the workers' processes."""
    if workers is None:
        for i, point in enumerate(points, start=first):
            collect(i, _run_trial(point))
        return
    _run_isolated(list(enumerate(points, start=first)), workers, collect)


def _pbo(returns: list[pd.Series]) -> overfit.PBOResult | None:
    """PBO of choosing the best of these trials, when there are enough trials and days to say."""
    if len(returns) < 2:
        return None
    frame = pd.concat(returns, axis=1)
    n_splits = overfit.splits_for(len(frame))
    return overfit.pbo(frame, n_splits=n_splits) if n_splits else None


def _progress_bar(total: int, label: str, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal
    return tqdm(total=total, desc=f"sweep {label}", unit="trial")


def _advance(bar, outcome) -> None:
    if bar is None:
        return
    sharpe = outcome.metrics.get("sharpe", math.nan)
    if not math.isnan(sharpe) and sharpe > getattr(bar, "best_sharpe", -math.inf):
        bar.best_sharpe = sharpe
        bar.set_postfix(best_sharpe=f"{sharpe:.2f}", refresh=False)
    bar.update(1)


def _table(outcomes: list[Outcome], names: list[str]) -> pd.DataFrame:
    records = [{**{n: o.params[n] for n in names}, "run_id": o.run_id, "status": "failed" if o.error else "done",
                "error": o.error, **o.metrics} for o in outcomes]
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


def notebook_sweep(path: str | Path, grid: dict, *, fixed: dict | None = None, workers: int = 1,
                   settings: Settings | None = None, progress: bool | None = None, search: str = "grid",
                   n_trials: int | None = None, seed: int | None = None, constraints=None,
                   select: str = "sharpe", split=None, warmup_bars: int = 0) -> SweepResult:
    """:func:`sweep` of a notebook: one run of the notebook per trial, with ``fixed`` notebook
    parameters in every one (see :func:`farmkit.research.notebooks.run_sweep`). A ``split`` (a
    fraction or a date) cuts the bars of the notebook's first ``fk.backtest`` in each trial.

    >>> notebook_sweep("notebooks/strategies/sma_crossover.ipynb", {"fast": "3..30", "slow": [50, 100]},
    ...                fixed={"days": 10}, search="tpe", n_trials=20, seed=1)
    """
    from farmkit.research import notebooks

    path = Path(path)
    if search not in SEARCHES:
        raise ParameterError(f"search={search!r} is not a search; choose one of {', '.join(SEARCHES)}")
    settings = settings or Settings.from_env()
    done = notebooks.run_sweep(path, grid or {}, workers=workers, settings=settings, progress=progress is not False,
                               fixed=fixed, search=search, n_trials=n_trials, seed=seed, constraints=constraints,
                               select=select, split=split, warmup_bars=warmup_bars)
    pbo = _pbo(done.returns)
    if done.oos is not None:
        done.oos["is_pbo"] = pbo.pbo if pbo is not None else math.nan
    return SweepResult(sweep_id=done.sweep_id, strategy=path.stem, params=list(grid or {}), table=done.table,
                       interrupted=done.interrupted, store=open_store(settings.store), oos=done.oos,
                       returns=pd.concat(done.returns, axis=1) if done.returns else pd.DataFrame(), pbo=pbo)
