"""``fk.backtest``: a strategy on historical bars, through the run kernel, with complete FMEL.

:func:`plan` checks what was asked and gathers it (bars, broker model, cerebro's options, the
strategy's parameters) into a :class:`Plan`; :func:`run` runs a plan as a backtest. A paper pod runs
the same plan on live bars instead (see :mod:`farmkit.modes`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

from farmkit.research import split, trials
from farmkit.research.progress import PROGRESS_FILE, SHOW_AFTER, BacktestProgress
from farmkit.brokers.config import BrokerConfig
from farmkit.data.bars import Bars, to_bars
from farmkit.fmel.recorder import FmelRecorder
from farmkit.kernel import Engine, Run, check_params, check_strategy, history_feeds, merge_params, new_run_id
from farmkit.settings import Settings

__all__ = ["Plan", "backtest", "plan", "run"]


@dataclass
class Plan:
    """Everything a backtest of one strategy needs, checked: the bars, the strategy's parameters
    (a mapping of their own), the broker model and cerebro's options."""

    strategy: type
    bars: Bars
    params: dict
    broker: BrokerConfig
    engine: Engine = field(default_factory=Engine)
    fromdate: object = None
    todate: object = None
    agent_id: str | None = None
    settings: Settings = field(default_factory=Settings.from_env)
    store: object = None
    progress: str | None = None
    progress_after: float = SHOW_AFTER   # seconds a backtest runs before progress "auto" shows


def plan(strategy: type, data, cash: float = 100_000.0, commission: float = 0.0, *,
         slippage_perc: float = 0.0, slippage_fixed: float = 0.0, slip_open: bool = True, slip_limit: bool = True,
         slip_match: bool = True, slip_out: bool = False, coc: bool = False, coo: bool = False,
         sizer: type | None = None, sizer_params: dict | None = None,
         runonce: bool = True, preload: bool = True, exactbars: int = 0, fromdate=None, todate=None,
         agent_id: str | None = None, tz: str | None = None, settings: Settings | None = None,
         store=None, progress: str | None = None, params: Mapping | None = None, **kwargs) -> Plan:
    """Backtest a strategy on historical bars with complete FMEL, and return a :class:`BacktestResult`.

    ``data`` is what ``fk.data`` returns, a DataFrame of OHLCV bars with a DatetimeIndex, or a dict
    of them keyed by symbol. The strategy's parameters are ``params={...}`` and/or extra keyword
    arguments; a parameter named like one of the options below goes in ``params``.

    Every option means what backtrader's option of that name means, with backtrader's default, but
    two: ``cash`` defaults to 100,000 (backtrader's broker starts with 10,000), and ``tz`` is the time
    zone of naive input timestamps (not cerebro's ``tz``, which only changes how dates are shown).
    The others: ``commission`` (``broker.setcommission(commission=...)``), ``slippage_perc`` /
    ``slippage_fixed`` with ``slip_open``, ``slip_limit``, ``slip_match``, ``slip_out``
    (``broker.set_slippage_*``), ``coc`` (``broker.set_coc``), ``coo`` (cerebro's ``cheat_on_open``:
    ``next_open()`` runs and its orders fill at the open), ``sizer``/``sizer_params``
    (``cerebro.addsizer``), ``runonce``, ``preload``, ``exactbars`` (cerebro's), ``fromdate`` and
    ``todate`` (every feed's).

    >>> res = fk.backtest(SmaCross, bars, cash=100_000, commission=0.0005, fast=5)
    >>> res.metrics["sharpe"], res.explain(bar=120)
    """
    options = {name: value for name, value in locals().items() if name in _OPTIONS}
    check_strategy(strategy)
    given = {name: not _same(value, _OPTIONS[name]) for name, value in options.items()}
    params = check_params(strategy, merge_params(strategy, params, kwargs, given))
    broker = BrokerConfig(cash=cash, commission=commission, slippage_perc=slippage_perc,
                          slippage_fixed=slippage_fixed, slip_open=slip_open, slip_limit=slip_limit,
                          slip_match=slip_match, slip_out=slip_out, coc=coc, coo=coo, sizer=sizer,
                          sizer_params=sizer_params or {})
    return Plan(strategy=strategy, bars=to_bars(data, tz=tz), params=params, broker=broker,
                engine=Engine(runonce=runonce, preload=preload, exactbars=exactbars), fromdate=fromdate,
                todate=todate, agent_id=agent_id, settings=settings or Settings.from_env(), store=store,
                progress=progress)


_OPTIONS = {name: p.default for name, p in inspect.signature(plan).parameters.items()
            if p.default is not p.empty and name != "params"}


def _same(value, default) -> bool:
    try:
        return value is default or bool(value == default)
    except Exception:  # noqa: BLE001 - values that do not compare (arrays) differ
        return False


def _claim_run_id(settings: Settings, store) -> tuple[str, bool]:
    # `farm backtest` registers its run as queued and passes the id in FARM_RUN_ID: the first
    # backtest of that notebook takes it, any later one gets a fresh id.
    if settings.run_id:
        row = store.runs.get(settings.run_id)
        if row is None or row.get("status") == "queued":
            return settings.run_id, True
    return new_run_id(), False


def _progress(plan: Plan, recorder: FmelRecorder, total: int, store) -> BacktestProgress:
    settings = plan.settings
    mode, record_to = plan.progress or settings.progress, None
    if settings.run_id and mode != "off":
        # Run by `farm backtest`: the kernel's output goes into the executed notebook, so the
        # progress goes to the notebook run's folder, and the farm process shows it.
        folder = store.run_dir(settings.run_id)
        mode, record_to = (mode, folder / PROGRESS_FILE) if folder.is_dir() else ("off", None)
    return BacktestProgress(lambda: recorder.bars, total, mode, plan.strategy.__name__,
                            after=plan.progress_after, record_to=record_to)


def run(plan: Plan):
    """Run a :class:`Plan` as a backtest and return its :class:`BacktestResult`."""
    from farmkit.fmel.stores import open_store

    settings = plan.settings
    store = plan.store or open_store(settings.store)
    run_id, claimed = _claim_run_id(settings, store)
    kernel = Run(plan.strategy, plan.params, mode="backtest", broker=plan.broker, engine=plan.engine,
                 settings=settings, store=store, agent_id=plan.agent_id, run_id=run_id)
    bars = plan.bars
    # A notebook sweep's split trial says in its queued row which side of the split it runs on.
    asked = (store.runs.get(run_id) or {}).get("split") if claimed else None
    if isinstance(asked, dict):
        bars, window = split.claimed_bars(bars, asked)
    kernel.register(data_fingerprint=bars.fingerprint())
    if isinstance(asked, dict):
        store.runs.upsert(run_id, split=split.window_record(asked, window))
    recorder = kernel.record()
    kernel.build(history_feeds(bars, fromdate=plan.fromdate, todate=plan.todate))
    total = max(len(f) for f in bars.values())
    with _progress(plan, recorder, total, store):
        kernel.execute()
    result = kernel.finish(bars, extra_metrics=lambda result: trials.trial_metrics(
        store, kernel.name, kernel.code, result, family_key=kernel.family))
    if isinstance(asked, dict) and asked.get("side") == "out_of_sample":
        split.finish_out_of_sample(result, window, asked, store, settings)
    if claimed:  # run by `farm backtest`: keep the tearsheet with the run's other artifacts
        result.to_html()
    return result


@functools.wraps(plan)
def backtest(*args, **kwargs):
    return run(plan(*args, **kwargs))


backtest.__name__ = backtest.__qualname__ = "backtest"
