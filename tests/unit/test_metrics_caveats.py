"""Figures from too few observations say so: in `caveats`, the metrics table and a backtest's summary;
`res.metrics` is a Series keyed and ordered like the table."""

from __future__ import annotations

import backtrader as bt
import pandas as pd
import pytest

import farmkit as fk
from farmkit import metrics, report


class Flip(bt.Strategy):
    """Buys on odd bars and sells on even ones: plenty of trades on any span."""

    def next(self):
        if len(self) % 60 == 1:
            self.order_target_size(target=0 if self.position else 10)


def test_caveats_name_the_figures_computed_from_too_few_days_or_trades():
    notes = metrics.caveats({"sharpe": -149.56, "sortino": -80.0, "cagr": -0.99, "volatility": 0.3,
                             "total_return": -0.01, "days": 2, "trades": 3, "win_rate": 0.33})
    assert notes == {"sharpe": "from 2 daily returns; needs 30 or more",
                     "sortino": "from 2 daily returns; needs 30 or more",
                     "volatility": "from 2 daily returns; needs 30 or more",
                     "cagr": "from 2 daily returns; needs 63 or more",
                     "win_rate": "from 3 trades; needs 10 or more"}
    assert metrics.caveats({"sharpe": 1.2, "cagr": 0.1, "days": 300, "trades": 40, "win_rate": 0.5}) == {}


def test_a_two_day_backtest_says_its_sharpe_is_from_two_daily_returns(farm_home):
    res = fk.backtest(Flip, fk.data.synthetic("AAPL", days=2, seed=3))
    table = res.summary()
    assert table.loc["Daily returns", "value"] == "2"
    assert table.loc["Sharpe ratio", "note"] == "from 2 daily returns; needs 30 or more"
    assert table.loc["Total return", "note"] == ""


def test_a_long_backtest_has_no_notes_on_its_ratios(farm_home):
    res = fk.backtest(Flip, fk.data.synthetic("AAPL", days=45, seed=3))
    table = res.summary()
    assert table.loc["Sharpe ratio", "note"] == "" and table.loc["Volatility (ann.)", "note"] == ""
    assert table.loc["CAGR", "note"] == "from 45 daily returns; needs 63 or more"


def test_res_metrics_is_a_series_in_the_tables_order(farm_home):
    res = fk.backtest(Flip, fk.data.synthetic("AAPL", days=3, seed=3))
    assert isinstance(res.metrics, pd.Series) and res.metrics.dtype == "float64"
    assert res.metrics["sharpe"] == res.figures["sharpe"]
    assert res.metrics["trades"] == res.figures["trades"] > 0
    names = [report._METRICS.get(k, (k.replace("_", " ").capitalize(),))[0] for k in res.metrics.index]
    assert names == list(res.summary().index)
    # What the registry keeps is the same figures.
    assert fk.runs().set_index("run_id").loc[res.run_id, "metrics"]["sharpe"] == pytest.approx(res.metrics["sharpe"],
                                                                                                 nan_ok=True)


def test_a_table_of_counters_keeps_one_row_each_and_no_note():
    table = report.metrics_table(pd.Series({"sharpe": 1.5, "days": 1, "messages": {"routed": 12, "late": 3}},
                                           dtype=object))
    assert table.loc["Messages: routed", "value"] == "12" and table.loc["Messages: late", "note"] == ""
    assert table.loc["Sharpe ratio", "note"] == "from 1 daily return; needs 30 or more"
