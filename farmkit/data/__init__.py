"""Market data for backtests: synthetic, files, Alpaca history. Everything comes back as `Bars`."""

from farmkit.data.alpaca_history import alpaca
from farmkit.data.bars import Bars, to_bars
from farmkit.data.files import load
from farmkit.data.synthetic import synthetic

__all__ = ["Bars", "alpaca", "load", "synthetic", "to_bars"]
