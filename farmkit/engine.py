"""One wiring of cerebro for every run: feeds, strategy, broker, FMEL recorder, store."""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import math
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field, fields

import backtrader as bt
import numpy as np
import pandas as pd

import farmkit
from farmkit import leaderboard
from farmkit import metrics as _metrics
from farmkit import trials
from farmkit.data.bars import Bars, to_bars
from farmkit.errors import ParameterError, StrategyError
from farmkit.feeds import HistoryFeed
from farmkit.fmel.recorder import FmelRecorder, RecorderHook
from farmkit.fmel.stores import open_store
from farmkit.settings import Settings


@dataclass(frozen=True)
class BrokerConfig:
    """Broker settings with backtrader's defaults; ``commission`` means what
    ``broker.setcommission(commission=...)`` means."""

    cash: float = 100_000.0
    commission: float = 0.0
    slippage_perc: float = 0.0
    slippage_fixed: float = 0.0
    slip_open: bool = False
    coc: bool = False           # cheat-on-close: market orders fill at this bar's close
    coo: bool = False           # cheat-on-open
    sizer: type | None = None
    sizer_params: dict = field(default_factory=dict)

    def as_kwargs(self) -> dict:
        """The keyword arguments of ``fk.backtest`` that rebuild this broker."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def apply(self, cerebro: bt.Cerebro, broker: bt.broker.BrokerBase | None = None) -> None:
        """Configure cerebro's broker (or install ``broker``, e.g. Alpaca paper, which keeps its own
        cash and fees); the sizer always goes on cerebro."""
        from farmkit.brokers.sim import configure
        if broker is None:
            configure(cerebro.broker, self)
        else:
            cerebro.setbroker(broker)
        if self.sizer is not None:
            cerebro.addsizer(self.sizer, **self.sizer_params)


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


def check_params(strategy: type, params: dict) -> dict:
    """Reject unknown parameter names and values of the wrong type before anything runs."""
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


def _timeframe(frame: pd.DataFrame) -> tuple[int, int]:
    if len(frame) < 2:
        return bt.TimeFrame.Days, 1
    step = pd.Series(frame.index[1:] - frame.index[:-1]).median()
    if step >= pd.Timedelta(days=1):
        return bt.TimeFrame.Days, 1
    if step >= pd.Timedelta(minutes=1):
        return bt.TimeFrame.Minutes, max(1, int(step / pd.Timedelta(minutes=1)))
    return bt.TimeFrame.Seconds, max(1, int(step / pd.Timedelta(seconds=1)))


def _claim_run_id(settings: Settings, store) -> tuple[str, bool]:
    # `farm backtest` registers its run as queued and passes the id in FARM_RUN_ID: the first
    # backtest of that notebook takes it, any later one gets a fresh id.
    if settings.run_id:
        row = store.runs.get(settings.run_id)
        if row is None or row.get("status") == "queued":
            return settings.run_id, True
    return new_run_id(), False


class _Progress:
    """A progress bar fed by polling the recorder from a thread: nothing is added to the bar loop."""

    def __init__(self, recorder: FmelRecorder, total: int, mode: str, label: str):
        self.recorder, self.total = recorder, total
        self.enabled = mode == "on" or (mode == "auto" and total >= 200_000)
        self._stop = threading.Event()
        self._thread = None
        self.label = label

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total, unit="bar", unit_scale=True, desc=self.label, leave=False)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.25):
            self._bar.n = self.recorder.bars
            self._bar.refresh()

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._bar.n = self.recorder.bars
            self._bar.close()


def register_run(store, run_id: str, *, strategy: type, agent_id: str, mode: str, params: dict,
                 data_fingerprint: str | None, code: str) -> float:
    """Put a run in the registry as running; returns its start time."""
    started = time.time()
    store.runs.upsert(run_id, agent_id=agent_id, strategy=strategy.__name__, mode=mode, status="running",
                      params={k: _plain(v) for k, v in params.items()},
                      params_hash=hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()
                                                 ).hexdigest()[:16],
                      data_fingerprint=data_fingerprint, code_hash=code,
                      farmkit_version=farmkit.__version__, started_at=pd.Timestamp(started, unit="s", tz="UTC"))
    return started


def run_cerebro(cerebro: bt.Cerebro, recorder: FmelRecorder, store, run_id: str, name: str, started: float,
                on_stop=None):
    """Run cerebro; whatever happens, the FMEL recorded so far is written and the registry says how
    the run ended. A strategy that raises becomes a :class:`StrategyError` naming the bar."""
    try:
        return cerebro.run()[0]
    except KeyboardInterrupt:
        # Stopped by hand: keep what was recorded, and say so in the registry.
        recorder.flush()
        on_stop and on_stop()
        store.runs.upsert(run_id, status="interrupted", bars=recorder.bars,
                          finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - started)
        raise
    except Exception as exc:
        text = traceback.format_exc()
        bar = recorder.on_error(exc, text) if recorder.strategy is not None else None
        when = (pd.Timestamp(recorder.timestamps[-1] - 719163.0, unit="D", tz="UTC").round("ms")
                if bar is not None else None)
        recorder.flush()
        on_stop and on_stop()
        store.runs.upsert(run_id, status="failed", error=text, failed_bar=bar, bars=recorder.bars,
                          finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - started)
        where = f" at bar {bar} ({when})" if bar is not None else " before the first bar"
        raise StrategyError(f"{name} raised {type(exc).__name__}: {exc}{where}. "
                            f"FMEL up to that bar is kept in run {run_id}; "
                            f"fk.fmel.explain({run_id!r}, bar={bar}) shows it.",
                            run_id=run_id, bar_number=bar, timestamp=when, traceback_text=text) from exc


def backtest(strategy: type, data, cash: float = 100_000.0, commission: float = 0.0, *,
             slippage_perc: float = 0.0, slippage_fixed: float = 0.0, slip_open: bool = False,
             coc: bool = False, coo: bool = False, sizer: type | None = None, sizer_params: dict | None = None,
             agent_id: str | None = None, tz: str | None = None, settings: Settings | None = None,
             store=None, progress: str | None = None, **params):
    """Backtest a strategy on historical bars with complete FMEL, and return a :class:`BacktestResult`.

    ``data`` is what ``fk.data`` returns, a DataFrame of OHLCV bars with a DatetimeIndex, or a dict
    of them keyed by symbol. Extra keyword arguments are the strategy's parameters.

    >>> res = fk.backtest(SmaCross, bars, cash=100_000, commission=0.0005, fast=5)
    >>> res.metrics["sharpe"], res.explain(bar=120)
    """
    from farmkit.result import BacktestResult

    if not (isinstance(strategy, type) and issubclass(strategy, bt.Strategy)):
        raise TypeError(f"strategy must be a backtrader Strategy class (e.g. a fk.Strategy subclass), "
                        f"got {strategy!r}")
    check_params(strategy, params)
    bars = to_bars(data, tz=tz)
    settings = settings or Settings.from_env()
    if settings.mode == "paper":
        # A paper pod runs the research notebook unchanged: its bars prime the indicators, live bars
        # come from the bus. The one place where the two modes part.
        from farmkit.paper import paper
        from farmkit.warmup import warmup_history
        history = warmup_history(settings.warmup, list(bars), settings.warmup_bars, bars, home=settings.home,
                                 store=settings.store)
        return paper(strategy, list(bars), history=history, bus=settings.bus,
                     subscription=settings.subscription, agent_id=agent_id or settings.agent_id,
                     cash=cash, commission=commission, settings=settings, store=store,
                     state_dir=settings.state_dir, **params)
    broker = BrokerConfig(cash=float(cash), commission=float(commission), slippage_perc=slippage_perc,
                          slippage_fixed=slippage_fixed, slip_open=slip_open, coc=coc, coo=coo,
                          sizer=sizer, sizer_params=sizer_params or {})
    store = store or open_store(settings.store)
    run_id, claimed = _claim_run_id(settings, store)
    agent_id = agent_id or strategy.__name__
    code = code_hash(strategy)
    started = register_run(store, run_id, strategy=strategy, agent_id=agent_id, mode="backtest", params=params,
                           data_fingerprint=bars.fingerprint(), code=code)
    recorder = FmelRecorder(run_id, agent_id, mode="backtest", sink=store.write_fmel)
    cerebro = build_cerebro(strategy, history_feeds(bars), broker, recorder, params)
    total = max(len(f) for f in bars.values())
    with _Progress(recorder, total, progress or settings.progress, strategy.__name__):
        run_cerebro(cerebro, recorder, store, run_id, strategy.__name__, started)
    recorder.flush()
    result = BacktestResult.from_run(run_id=run_id, agent_id=agent_id, strategy=strategy, params=params,
                                     bars=bars, recorder=recorder, store=store, broker=broker)
    result.metrics.update(_honest_metrics(store, strategy.__name__, code, result))
    store.runs.upsert(run_id, status="done", metrics=result.metrics, bars=recorder.bars,
                      finished_at=pd.Timestamp.now(tz="UTC"), duration_s=time.time() - started)
    leaderboard.publish(settings, store.runs.get(run_id))   # logged on failure; never breaks the run
    if claimed:  # run by `farm backtest`: keep the tearsheet with the run's other artifacts
        result.to_html()
    return result


def _honest_metrics(store, strategy: str, code: str, result) -> dict:
    """PSR, DSR and minimum track record of this run as one more trial of its strategy family
    (same strategy name and code hash): every backtest counts, whatever started it."""
    family = trials.family(store, strategy, code)
    sharpe_daily = result.metrics.get("sharpe", float("nan")) / math.sqrt(_metrics.TRADING_DAYS)
    n_trials, variance = trials.family_stats([*family["sharpe_daily"], sharpe_daily])
    honest = trials.honest_metrics(result.equity, n_trials, variance)
    return {"psr": honest["psr"], "dsr": honest["dsr"], "min_track_record_days": honest["min_track_record_days"],
            "trials": n_trials}


def history_feeds(bars: Bars) -> list[HistoryFeed]:
    feeds = []
    for symbol, frame in bars.items():
        timeframe, compression = _timeframe(frame)
        feeds.append(HistoryFeed(dataname=frame, name=symbol, timeframe=timeframe, compression=compression))
    return feeds


def build_cerebro(strategy: type, feeds: list, broker: BrokerConfig, recorder: FmelRecorder,
                  params: dict, *, broker_instance=None, hooks=(), **cerebro_kwargs) -> bt.Cerebro:
    """The wiring shared by every kind of run: backtest and paper differ only in the feeds (and so
    the clock). Observers are off: FMEL records what they would plot. ``hooks`` are ``(analyzer, kwargs)``
    pairs that see each bar before the recorder does."""
    cerebro = bt.Cerebro(stdstats=False, **cerebro_kwargs)
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
