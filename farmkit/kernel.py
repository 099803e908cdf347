"""The run kernel: one lifecycle for every kind of run.

A backtest, a sweep trial, a look-ahead re-run and a paper session all go through :class:`Run`:

    run = Run(SmaCross, {"fast": 5}, mode="backtest", broker=BrokerConfig(cash=50_000), settings=settings)
    run.register(data_fingerprint=bars.fingerprint())       # identity, checks, the registry row
    recorder = run.record()                                 # the FMEL recorder, writing to the store
    run.build(history_feeds(bars))                          # cerebro's wiring
    run.execute()                                           # run; how it ended goes to the registry
    result = run.finish(bars)                               # metrics, registry row, leaderboard

They differ only in what they hand to :meth:`Run.build` — the feeds (history or live, and so the
clock), the broker instance (simulated or Alpaca paper) and any hooks — and in the recorder's
batching. The broker model (:class:`~farmkit.brokers.BrokerConfig`), the strategy's parameters
(one mapping of their own, never mixed with a run's options) and cerebro's run options
(:class:`Engine`) reach every kind of run whole.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import os
import secrets
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd

from farmkit import leaderboard
from farmkit.redact import Redactor
from farmkit.brokers.config import BrokerConfig
from farmkit.data.bars import Bars
from farmkit.errors import DataError, ParameterError, ShadowedParameter, StrategyError
from farmkit.feeds import HistoryFeed
from farmkit.fmel.recorder import FmelRecorder, RecorderHook
from farmkit.fmel.stores import open_store
from farmkit.settings import Settings
from farmkit.version import __version__

__all__ = ["Engine", "Run", "bar_size", "build_cerebro", "check_params", "check_strategy", "code_hash",
           "history_feeds", "new_run_id", "strategy_family"]


@dataclass(frozen=True)
class Engine:
    """cerebro's own run options, with backtrader's meanings and defaults: ``runonce`` (vectorised
    indicators), ``preload`` (feeds loaded before the run), ``exactbars`` (0 keeps every bar; -1, -2
    and 1 save memory as backtrader's ``exactbars`` does, and turn ``runonce`` off)."""

    runonce: bool = True
    preload: bool = True
    exactbars: int = 0

    def __post_init__(self):
        if isinstance(self.exactbars, bool) or not isinstance(self.exactbars, int) or self.exactbars < -2:
            raise ParameterError(f"exactbars must be 0, -1, -2 or a positive int (backtrader's meanings), "
                                 f"got {self.exactbars!r}")

    def cerebro_kwargs(self) -> dict:
        return {"runonce": bool(self.runonce), "preload": bool(self.preload), "exactbars": int(self.exactbars)}


def new_run_id(prefix: str = "bt") -> str:
    return f"{prefix}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def code_hash(cls: type) -> str:
    """Hash of a strategy's code: the same class text gives the same hash in any process, including
    classes defined in a notebook cell (whose methods' source IPython keeps)."""
    h = hashlib.sha256()
    for klass in cls.__mro__:
        if klass.__module__.startswith(("backtrader", "farmkit")) or klass is object:
            continue
        try:
            h.update(inspect.getsource(klass).encode())
            continue
        except (OSError, TypeError):
            pass
        for name, member in sorted(vars(klass).items()):
            function = getattr(member, "__func__", member)
            code = getattr(function, "__code__", None)
            if code is None:
                continue
            try:
                text = inspect.getsource(function)
            except (OSError, TypeError):
                text = _code_text(code)
            h.update(name.encode() + text.encode())
    h.update(repr(sorted(cls.params._getitems(), key=lambda kv: kv[0])).encode())
    return h.hexdigest()[:16]


def _code_text(code) -> str:
    # Bytecode, constants and names, but not the file name or line numbers (which differ per cell run).
    consts = [(_code_text(c) if hasattr(c, "co_code") else repr(c)) for c in code.co_consts]
    return code.co_code.hex() + repr(consts) + repr(code.co_names)


def strategy_family(name: str, settings: Settings, store, environ: Mapping[str, str] | None = None,
                    cwd: str | None = None) -> str:
    """The family a run's strategy belongs to: ``NOTEBOOK::Name`` for a strategy in a notebook (the one
    ``farm backtest`` registered under ``FARM_RUN_ID``, else the one a Jupyter kernel runs,
    ``JPY_SESSION_NAME``), ``agent:AGENT::Name`` in an agent (``FARM_AGENT_ID``), else the class name
    alone (a plain script). Every code version of the strategy is a trial of the same family.

    >>> strategy_family("SmaCross", settings, store)      # in notebooks/strategies/sma_crossover.ipynb
    '/home/me/farm/notebooks/strategies/sma_crossover.ipynb::SmaCross'
    """
    environ = os.environ if environ is None else environ
    queued = store.runs.get(settings.run_id) if settings.run_id else None
    notebook = (queued or {}).get("notebook") or environ.get("JPY_SESSION_NAME")
    if isinstance(notebook, str) and notebook:
        return f"{_notebook_path(notebook, cwd or os.getcwd())}::{name}"
    if settings.agent_id:
        return f"agent:{settings.agent_id}::{name}"
    return name


def _notebook_path(notebook: str, cwd: str) -> str:
    # The same notebook by the same name from `farm backtest` (a path from where it was started) and
    # from Jupyter (one from the server's root): both kernels run in the notebook's own folder.
    path = Path(notebook)
    if path.is_absolute():
        return str(path)
    for candidate in (Path(cwd) / path, Path(cwd) / path.name):
        if candidate.exists():
            return str(candidate.resolve())
    return str(path)


def check_strategy(strategy) -> type:
    if not (isinstance(strategy, type) and issubclass(strategy, bt.Strategy)):
        raise TypeError(f"strategy must be a backtrader Strategy class (e.g. a fk.Strategy subclass), "
                        f"got {strategy!r}")
    return strategy


def check_params(strategy: type, params: Mapping) -> dict:
    """Reject unknown parameter names and values of the wrong type before anything runs."""
    params = dict(params)
    known = dict(zip(strategy.params._getkeys(), strategy.params._getdefaults()))
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ParameterError(f"{strategy.__name__} has no parameter(s) {', '.join(unknown)}; "
                             f"its parameters are: {', '.join(f'{k}={v!r}' for k, v in known.items()) or 'none'}")
    for name, value in params.items():
        default = known[name]
        if default is None or value is None:
            continue
        ok = (isinstance(value, bool) if isinstance(default, bool) else
              isinstance(value, (int, np.integer)) and not isinstance(value, bool) if isinstance(default, int) else
              isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
              if isinstance(default, float) else
              isinstance(value, type(default)))
        if not ok:
            raise ParameterError(f"{strategy.__name__}.{name} expects {type(default).__name__} "
                                 f"(default {default!r}), got {type(value).__name__} {value!r}")
    return params


def merge_params(strategy: type, params: Mapping | None, extra: Mapping, options: Mapping) -> dict:
    """A run's strategy parameters: the ``params`` mapping plus keyword arguments that are not the
    run's own options. A strategy parameter named like one of the run's options (``options``: name ->
    whether that option was given) can only be set through ``params``: when the option was given and
    ``params`` does not set the parameter, a warning says that the value went to the run, not the
    strategy."""
    merged = {**dict(params or {}), **dict(extra)}
    names = dict(zip(strategy.params._getkeys(), strategy.params._getdefaults()))
    for name, given in options.items():
        if name in names and given and name not in merged:
            warnings.warn(f"{strategy.__name__} has a parameter {name!r} too: the {name}= given is the run's "
                          f"option, and the strategy keeps its default {names[name]!r}; set the strategy's "
                          f"with params={{{name!r}: ...}}", ShadowedParameter, stacklevel=3)
    return merged


def bar_size(frame: pd.DataFrame | None) -> tuple[int, int]:
    """backtrader's (timeframe, compression) for a frame's bars, from the median step of its index;
    daily when it has fewer than two bars."""
    if frame is None or len(frame) < 2:
        return bt.TimeFrame.Days, 1
    step = pd.Series(frame.index[1:] - frame.index[:-1]).median()
    if step >= pd.Timedelta(days=1):
        return bt.TimeFrame.Days, 1
    if step >= pd.Timedelta(minutes=1):
        return bt.TimeFrame.Minutes, max(1, int(step / pd.Timedelta(minutes=1)))
    return bt.TimeFrame.Seconds, max(1, int(step / pd.Timedelta(seconds=1)))


def history_feeds(bars: Bars, *, fromdate=None, todate=None) -> list[HistoryFeed]:
    """One :class:`HistoryFeed` per symbol, with its bar size; ``fromdate``/``todate`` as backtrader's."""
    feeds = []
    for symbol, frame in bars.items():
        timeframe, compression = bar_size(frame)
        feeds.append(HistoryFeed(dataname=frame, name=symbol, timeframe=timeframe, compression=compression,
                                 fromdate=_naive_utc(fromdate), todate=_naive_utc(todate)))
    return feeds


def _naive_utc(value):
    # backtrader compares feed dates as naive UTC datetimes.
    if value is None:
        return None
    ts = pd.Timestamp(value)
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    return ts.to_pydatetime()


def build_cerebro(strategy: type, feeds: list, broker: BrokerConfig, recorder: FmelRecorder,
                  params: Mapping, *, broker_instance=None, hooks=(), engine: Engine | None = None,
                  **cerebro_kwargs) -> bt.Cerebro:
    """The wiring shared by every kind of run: backtest and paper differ only in the feeds (and so
    the clock) and the broker instance. Observers are off: FMEL records what they would plot.
    ``hooks`` are ``(analyzer, kwargs)`` pairs that see each bar before the recorder does."""
    options = {**(engine or Engine()).cerebro_kwargs(), **broker.cerebro_kwargs(), **cerebro_kwargs}
    cerebro = bt.Cerebro(stdstats=False, **options)
    for feed in feeds:
        cerebro.adddata(feed)
    broker.apply(cerebro, broker_instance)
    cerebro.addstrategy(strategy, **params)
    for hook, kwargs in hooks:
        cerebro.addanalyzer(hook, **kwargs)
    cerebro.addanalyzer(RecorderHook, _name="fmel", recorder=recorder)
    return cerebro


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, type):
        return value.__name__
    return value


class Run:
    """One run of a strategy: its identity, checks, registration, broker model, recorder, wiring,
    running, finishing (done, failed, interrupted; a run whose process is gone reads as killed) and
    publishing. ``mode`` is ``backtest`` or ``paper``; only backtests count as trials of their
    strategy family (PSR/DSR) and must reach their strategy's first ``next()``."""

    def __init__(self, strategy: type, params: Mapping | None, *, mode: str = "backtest",
                 broker: BrokerConfig | None = None, engine: Engine | None = None,
                 settings: Settings | None = None, store=None, agent_id: str | None = None,
                 run_id: str | None = None):
        self.strategy = check_strategy(strategy)
        self.params = check_params(strategy, params or {})
        self.mode = mode
        self.broker = broker or BrokerConfig()
        self.engine = engine or Engine()
        self.settings = settings or Settings.from_env()
        self.store = store or open_store(self.settings.store)
        self.agent_id = agent_id or strategy.__name__
        self.run_id = run_id or new_run_id("bt" if mode == "backtest" else mode)
        self.code = code_hash(strategy)
        self.name = strategy.__name__
        self.family = strategy_family(self.name, self.settings, self.store)
        self.started = time.time()
        self.recorder: FmelRecorder | None = None
        self.cerebro: bt.Cerebro | None = None

    # -- identity and registration -----------------------------------------------------------------
    def register(self, data_fingerprint: str | None) -> None:
        """Put the run in the registry as running (a resumed run's row starts clean again)."""
        self.started = time.time()
        params = self.params
        self.store.runs.upsert(
            self.run_id, agent_id=self.agent_id, strategy=self.name, mode=self.mode, status="running",
            params={k: _plain(v) for k, v in params.items()}, broker=self.broker.to_record(),
            params_hash=hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16],
            data_fingerprint=data_fingerprint, code_hash=self.code, family=self.family, farmkit_version=__version__,
            started_at=pd.Timestamp(self.started, unit="s", tz="UTC"), finished_at=None, error=None, failed_bar=None,
            **{k: v for k in ("owner", "agent_uid") if (v := getattr(self.settings, k))})

    # -- wiring ------------------------------------------------------------------------------------
    def record(self, **options) -> FmelRecorder:
        """The run's FMEL recorder (``options`` as :class:`FmelRecorder`'s); it writes to the store
        unless a sink is given."""
        options.setdefault("sink", self.store.write_fmel)
        self.recorder = FmelRecorder(self.run_id, self.agent_id, mode=self.mode, **options)
        return self.recorder

    def build(self, feeds: list, *, broker_instance=None, hooks=()) -> bt.Cerebro:
        """cerebro wired with these feeds, the broker model (on ``broker_instance`` when given), the
        strategy with its parameters, ``hooks`` and the recorder."""
        if self.recorder is None:
            self.record()
        self.cerebro = build_cerebro(self.strategy, feeds, self.broker, self.recorder, self.params,
                                     broker_instance=broker_instance, hooks=hooks, engine=self.engine)
        return self.cerebro

    # -- running -----------------------------------------------------------------------------------
    def execute(self, on_stop=None):
        """Run cerebro; whatever happens, the FMEL recorded so far is written and the registry says
        how the run ended. A strategy that raises becomes a :class:`StrategyError` naming the bar;
        a backtest on fewer bars than its indicators need, a :class:`DataError` saying how many."""
        recorder = self.recorder
        try:
            strategy = self.cerebro.run()[0]
        except KeyboardInterrupt:
            # Stopped by hand: keep what was recorded, and say so in the registry.
            recorder.flush()
            on_stop and on_stop()
            self._ended("interrupted")
            raise
        except Exception as exc:
            # No credential of the environment in FMEL, the registry or the message (a pod's logs).
            redactor = Redactor.from_env()
            text, said = redactor.text(traceback.format_exc()), redactor.text(f"{type(exc).__name__}: {exc}")
            short = self._too_short() if self.mode == "backtest" else None
            bar = recorder.on_error(exc, text, reason=said) if recorder.strategy is not None and short is None else None
            when = (pd.Timestamp(recorder.timestamps[-1] - 719163.0, unit="D", tz="UTC").round("ms")
                    if bar is not None else None)
            recorder.flush()
            on_stop and on_stop()
            self._ended("failed", error=short or text, failed_bar=bar)
            if short is not None:
                raise DataError(short) from exc
            where = f" at bar {bar} ({when})" if bar is not None else " before the first bar"
            raise StrategyError(f"{self.name} raised {said}{where}. "
                                f"FMEL up to that bar is kept in run {self.run_id}; "
                                f"fk.fmel.explain({self.run_id!r}, bar={bar}) shows it.",
                                run_id=self.run_id, bar_number=bar, timestamp=when, traceback_text=text) from exc
        if self.mode == "backtest" and len(strategy) < strategy._minperiod:
            short = self._too_short()
            if short is not None:
                recorder.flush()
                on_stop and on_stop()
                self._ended("failed", error=short)
                raise DataError(short)
        return strategy

    def _too_short(self) -> str | None:
        """What is missing when the strategy's warm-up is longer than a feed, or None."""
        strategy = getattr(self.recorder, "strategy", None)
        if strategy is None:
            return None
        short = [(data._name or f"data{i}", need, data.buflen())
                 for i, (data, need) in enumerate(zip(strategy.datas, strategy._minperiods)) if need > data.buflen()]
        if not short and strategy._minperiod > min((d.buflen() for d in strategy.datas), default=0):
            short = [(d._name or f"data{i}", strategy._minperiod, d.buflen()) for i, d in enumerate(strategy.datas)
                     if strategy._minperiod > d.buflen()]
        if not short:
            return None
        got = ", ".join(f"{need} bars of {name} and got {have}" for name, need, have in short)
        return (f"{self.name} needs {got}: its indicators' warm-up (the longest period) is longer than the data, "
                f"so next() would never run. Load more bars (an earlier start or more days) or use shorter periods.")

    def _ended(self, status: str, **fields) -> None:
        self.store.runs.upsert(self.run_id, status=status, bars=self.recorder.first_bar + self.recorder.bars,
                               finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - self.started,
                               **fields)

    # -- finishing and publishing --------------------------------------------------------------------
    def finish(self, bars: Bars, *, extra_metrics=None, data_fingerprint: str | None = None):
        """The run's :class:`~farmkit.result.BacktestResult`; the registry row says done, with the
        metrics, and the run goes on its board. ``extra_metrics`` is a mapping, or a function of the
        result returning one (a backtest's PSR/DSR over its family's trials), added before both."""
        from farmkit.result import BacktestResult

        recorder = self.recorder
        recorder.flush()
        result = BacktestResult.from_run(run_id=self.run_id, agent_id=self.agent_id, strategy=self.strategy,
                                         params=self.params, bars=bars, recorder=recorder, store=self.store,
                                         broker=self.broker)
        result.figures.update(leaderboard.track_record(result.equity))   # what a board needs to rank it
        result.figures.update((extra_metrics(result) if callable(extra_metrics) else extra_metrics) or {})
        fields = {"data_fingerprint": data_fingerprint} if data_fingerprint else {}
        if recorder.strategy is not None:   # bars before its first next(): backtrader's minimum period - 1
            fields["warmup_bars"] = max(int(recorder.strategy._minperiod) - 1, 0)
        self.store.runs.upsert(self.run_id, status="done", metrics=result.figures,
                               bars=recorder.first_bar + recorder.bars, finished_at=pd.Timestamp.now(tz="UTC"),
                               duration_s=time.time() - self.started, **fields)
        leaderboard.publish(self.settings, self.store.runs.get(self.run_id), store=self.store)   # logged on failure
        return result
