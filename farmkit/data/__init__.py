"""Market data for backtests: synthetic, files, Alpaca history. Everything comes back as `Bars`."""

from farmkit.data.bars import Bars, to_bars
from farmkit.data.synthetic import synthetic

__all__ = ["Bars", "synthetic", "to_bars"]
