"""Backtest/live parity: replay the bars a paper run consumed through ``fk.backtest`` and compare
decisions, orders, fills and positions bar by bar. Same strategy, same bars, same broker model: any difference is a bug in
the live path (or a strategy that depends on wall time)."""

from __future__ import annotations

import json

import pandas as pd

from farmkit.data.bars import Bars
from farmkit.fmel.query import Comparison, compare, default_store
from farmkit.settings import Settings


class Parity(Comparison):
    """:class:`~farmkit.fmel.query.Comparison` of a paper run (``run_a``) with its replay (``run_b``)."""

    def __str__(self) -> str:
        if self.identical:
            return (f"paper run {self.run_a} and its replay {self.run_b} took identical decisions on all "
                    f"{self.bars} bars, with the same orders, fills and positions")
        first = self.differences.iloc[0]
        return (f"paper run {self.run_a} and its replay {self.run_b} first differ at {first.timestamp} "
                f"(paper bar {first.bar_a}) in {first.field}: paper had {first.a}, the backtest {first.b}; "
                f"{len(self.differences)} bar(s) differ in all")


def consumed_bars(records: pd.DataFrame) -> Bars:
    """The bars a run saw, rebuilt from its FMEL market state (one frame per symbol)."""
    rows: dict[str, list] = {}
    for ts, market in zip(records.timestamp, records.market_state):
        for symbol, ohlcv in json.loads(market).items():
            if isinstance(ohlcv, dict) and symbol != "events":
                rows.setdefault(symbol, []).append((ts, *(ohlcv[k] for k in ("open", "high", "low", "close", "volume"))))
    bars = Bars()
    for symbol, values in rows.items():
        frame = pd.DataFrame(values, columns=["timestamp", "open", "high", "low", "close", "volume"])
        frame = frame.drop_duplicates("timestamp", keep="first").set_index("timestamp").sort_index()
        bars[symbol] = frame.astype("float64")
    return bars


def load_strategy(spec: str) -> type:
    """The strategy class ``spec`` names, in any of these forms:

    - ``path/to/file.py:ClassName``: a Python file, imported as a module of its own;
    - ``package.module:ClassName``: an importable module;
    - ``notebook.ipynb`` or ``notebook.ipynb:ClassName``: a notebook's strategy (its imports, function and
      class definitions and literal assignments are run; nothing else, so no backtest runs);
    - ``agents/NAME`` or ``agents/NAME:ClassName``: a promoted agent (its ``agent.yaml`` names the class).

    >>> fk.parity(run_id, load_strategy("strategies.py:SmaCross"))
    >>> fk.parity(run_id, load_strategy("agents/sma-crossover"))
    """
    import importlib
    from pathlib import Path

    from farmkit.errors import ParameterError

    where, colon, name = spec.rpartition(":")
    if not colon or (len(where) == 1 and where.isalpha()):      # no class named (or a Windows drive letter)
        where, name = spec, ""
    path = Path(where).expanduser()
    if path.is_dir():
        manifest = path / "agent.yaml"
        if not manifest.is_file():
            raise ParameterError(f"{where} is a folder without agent.yaml; name a strategy as FILE.py:CLASS, "
                                 "module:CLASS, NOTEBOOK.ipynb[:CLASS] or an agent folder")
        import yaml
        agent = yaml.safe_load(manifest.read_text()) or {}
        return _from_notebook(path / agent.get("notebook", "agent.ipynb"), name or agent.get("strategy", ""))
    if where.endswith(".ipynb"):
        return _from_notebook(path, name)
    if not name:
        raise ParameterError(f"a strategy is named as FILE.py:CLASS, module:CLASS, NOTEBOOK.ipynb[:CLASS] or an "
                             f"agent folder, got {spec!r}")
    if where.endswith(".py"):
        if not path.is_file():
            raise ParameterError(f"{where}: no such file (current directory is {Path.cwd()})")
        namespace = _import_file(path)
    else:
        namespace = vars(importlib.import_module(where))
    return _pick(namespace, name, where)


def _import_file(path) -> dict:
    # A module of its own in sys.modules: backtrader and inspect look a class's module up there.
    import importlib.util
    import sys

    path = path.resolve()
    module_name = f"farm_strategy_{path.stem.replace('-', '_')}_{abs(hash(str(path))):x}"
    loaded = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loaded)
    sys.modules[module_name] = module
    try:
        loaded.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return vars(module)


def _from_notebook(path, name: str) -> type:
    import ast
    import sys
    import types

    import backtrader as bt
    import nbformat

    from farmkit.errors import ParameterError

    if not path.is_file():
        raise ParameterError(f"{path}: no such notebook")
    kept = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue       # IPython magics and the like: not where a strategy is defined
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef)):
                kept.append(node)
            elif isinstance(node, ast.Assign) and _literal(node.value):
                kept.append(node)
    module = types.ModuleType(f"farm_notebook_{path.stem.replace('-', '_')}_{abs(hash(str(path.resolve()))):x}")
    sys.modules[module.__name__] = module
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(path), "exec"), vars(module))
    if not name:
        found = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, bt.Strategy)
                 and v.__module__ == module.__name__]
        if len(found) != 1:
            raise ParameterError(f"{path} defines {len(found)} strategies ({', '.join(found) or 'none'}); "
                                 f"name one as {path}:CLASS")
        name = found[0]
    return _pick(vars(module), name, str(path))


def _literal(node) -> bool:
    import ast
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _pick(namespace: dict, name: str, where: str) -> type:
    from farmkit.errors import ParameterError

    if name not in namespace:
        raise ParameterError(f"{where} defines no {name}; it defines: "
                             + ", ".join(k for k, v in namespace.items() if isinstance(v, type)))
    return namespace[name]


def parity(paper_run_id: str, strategy: type, *, store=None, cash: float | None = None,
           commission: float | None = None, **params) -> Parity:
    """Replay a paper run's bars through ``fk.backtest(strategy)`` and compare decisions, orders,
    fills (size, price, commission) and positions bar by bar.

    Parameters default to the paper run's own (from the run registry) and so does the broker model
    (slippage, cheat-on-close/open, the sizer); ``cash`` and ``commission`` override it.

    >>> fk.parity(paper_res.run_id, SmaCross).identical
    """
    from farmkit.brokers.config import BrokerConfig
    from farmkit.research.backtest import backtest

    store = default_store(store)
    records = store.fmel(paper_run_id)
    if records.empty:
        raise KeyError(f"no FMEL records for run {paper_run_id!r}; fk.runs() lists the runs")
    run = store.runs.get(paper_run_id) or {}
    params = {**(run.get("params") or {}), **params}
    recorded = run.get("broker")
    broker = BrokerConfig.from_record(recorded) if isinstance(recorded, dict) else BrokerConfig()
    if cash is None:
        first = json.loads(records.performance.iloc[0])
        cash = first["equity"] - first["pnl"]
    model = {**broker.as_kwargs(), "cash": cash}
    if commission is not None:
        model["commission"] = commission
    # The replay is a check, not research: it stays off the leaderboard and out of the strategy's
    # family of trials (segment "parity"), so it cannot deflate anyone's Sharpe ratio.
    quiet = Settings.from_env().replace(redis="off", progress="off")
    replay = backtest(strategy, consumed_bars(records), store=store, settings=quiet,
                      agent_id=f"{run.get('agent_id') or strategy.__name__}/parity", params=params, **model)
    store.runs.upsert(replay.run_id, segment="parity")
    found = compare(paper_run_id, replay.run_id, store=store)
    return Parity(found.run_a, found.run_b, found.bars, found.differences, found.side_by_side)
