"""farmkit: backtests with full market event logging, from a notebook.

>>> import farmkit as fk
>>> bars = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=20, freq="1min", seed=7)
>>> res = fk.backtest(SmaCross, bars, cash=100_000, commission=0.0005, fast=5)
>>> res.metrics; res.plot(); res.explain(bar=1234)
"""

from farmkit.version import __version__  # noqa: F401 - fk.__version__
from farmkit import data, figures, fmel, leaderboard
from farmkit.data.bars import Bars
from farmkit.errors import DataError, FarmError, ParameterError, StrategyError
from farmkit.live.session import paper
from farmkit.modes import backtest
from farmkit.research.lookahead import LookaheadReport, check_lookahead
from farmkit.research.parity import Parity, parity
from farmkit.research.split import WalkForward
from farmkit.research.sweep import SweepResult, sweep
from farmkit.result import BacktestResult
from farmkit.settings import Settings
from farmkit.strategy import Strategy

runs = fmel.runs

# In a Jupyter kernel, each plotly figure a cell displays also carries a PNG, so a shared notebook
# shows its charts (FARM_FIGURE_IMAGES; see farmkit.figures). Elsewhere this does nothing.
figures.install()

def __getattr__(name):
    # fk.report (the tearsheet and metrics table) on first use: it imports plotly, which a backtest
    # that draws nothing does not need.
    if name == "report":
        import importlib

        return importlib.import_module("farmkit.report")
    raise AttributeError(f"module 'farmkit' has no attribute {name!r}")


__all__ = [
    "BacktestResult", "Bars", "DataError", "FarmError", "LookaheadReport", "ParameterError", "Parity", "Settings",
    "Strategy", "StrategyError", "SweepResult", "WalkForward", "backtest", "check_lookahead", "data", "fmel", "leaderboard",
    "paper", "parity", "report", "runs", "sweep",
]
