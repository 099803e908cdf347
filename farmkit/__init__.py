"""farmkit: backtests with full market event logging, from a notebook.

>>> import farmkit as fk
>>> bars = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=20, freq="1min", seed=7)
>>> res = fk.backtest(SmaCross, bars, cash=100_000, commission=0.0005, fast=5)
>>> res.metrics; res.plot(); res.explain(bar=1234)
"""

from farmkit.version import __version__  # noqa: F401 - fk.__version__
from farmkit import data, fmel, leaderboard
from farmkit.data.bars import Bars
from farmkit.modes import backtest
from farmkit.errors import DataError, FarmError, ParameterError, StrategyError
from farmkit.lookahead import LookaheadReport, check_lookahead
from farmkit.paper import paper
from farmkit.parity import Parity, parity
from farmkit.result import BacktestResult
from farmkit.settings import Settings
from farmkit.split import WalkForward
from farmkit.strategy import Strategy
from farmkit.sweep import SweepResult, sweep

runs = fmel.runs

__all__ = [
    "BacktestResult", "Bars", "DataError", "FarmError", "LookaheadReport", "ParameterError", "Parity", "Settings",
    "Strategy", "StrategyError", "SweepResult", "WalkForward", "backtest", "check_lookahead", "data", "fmel", "leaderboard",
    "paper", "parity", "runs", "sweep",
]
