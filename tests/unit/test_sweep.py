"""farmkit.sweep: one recorded backtest per grid point, in-process or in forked workers."""

import math

import backtrader as bt
import pandas as pd
import plotly.graph_objects as go
import pytest

import farmkit as fk
from farmkit.sweep import SweepResult, sweep


class Cross(fk.Strategy):
    params = dict(fast=5, slow=20, boom=0)

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))

    def next(self):
        if self.p.boom == 1 and len(self) == 30:
            raise ZeroDivisionError("boom at 30")
        if self.p.boom == 2 and len(self) == 30:
            raise KeyboardInterrupt  # stands in for Ctrl-C in the middle of a trial
        if self.cross > 0:
            self.buy(size=10, reason="fast above slow")
        elif self.cross < 0 and self.position:
            self.close(reason="fast below slow")


GRID = {"fast": [3, 8], "slow": [20, 40]}
METRICS = ["sharpe", "total_return", "max_drawdown", "trades", "sharpe_daily", "skew", "kurtosis", "psr", "dsr"]


@pytest.fixture
def bars(minute_bars):
    return minute_bars


def test_every_trial_is_a_recorded_run_of_the_sweep(farm_home, bars):
    res = sweep(Cross, bars, GRID, commission=0.0005, sweep_id="sw-test")
    table = res.table
    assert len(table) == 4 and not res.interrupted and res.sweep_id == "sw-test"
    assert list(table[["fast", "slow"]].itertuples(index=False, name=None)) == [(3, 20), (3, 40), (8, 20), (8, 40)]
    assert {"run_id", "status", "error", *METRICS, "min_track_record_days"} <= set(table.columns)
    assert (table.status == "done").all() and table.error.isna().all()
    assert table[["sharpe", "psr", "dsr"]].notna().all().all() and (table.dsr <= table.psr).all()
    runs = fk.runs().set_index("run_id")
    assert set(runs.index) == set(table.run_id) and (runs.sweep_id == "sw-test").all()
    for row in table.itertuples():
        assert runs.loc[row.run_id, "params"] == {"fast": row.fast, "slow": row.slow}
        assert runs.loc[row.run_id, "metrics"]["sharpe"] == pytest.approx(row.sharpe)
    assert len(fk.fmel.load(table.run_id.iloc[0])) == len(bars["AAPL"])
    best = res.best("sharpe")
    assert best.sharpe == table.sharpe.max()


def test_two_workers_give_the_same_table_as_one(farm_home, bars):
    one = sweep(Cross, bars, GRID, workers=1).table
    two = sweep(Cross, bars, GRID, workers=2).table
    assert set(one.run_id).isdisjoint(two.run_id)
    pd.testing.assert_frame_equal(one[["fast", "slow", *METRICS]], two[["fast", "slow", *METRICS]])
    assert len(fk.runs()) == 8


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(farm_home, bars):
    res = sweep(Cross, bars, {"boom": [0, 1, 0]}, workers=2, fast=3)
    assert list(res.table.status) == ["done", "failed", "done"]
    failed = res.table.iloc[1]
    assert "StrategyError" in failed.error and "boom at 30" in failed.error and math.isnan(failed.sharpe)
    assert math.isnan(failed.psr)
    runs = fk.runs().set_index("run_id")
    assert runs.loc[failed.run_id, "status"] == "failed" and runs.loc[failed.run_id, "sweep_id"] == res.sweep_id
    assert res.best().run_id in set(res.table.run_id[res.table.status == "done"])


def test_ctrl_c_returns_the_finished_trials(farm_home, bars):
    res = sweep(Cross, bars, {"boom": [0, 0, 2, 0]})
    assert res.interrupted and list(res.table.status) == ["done", "done"]


def test_ctrl_c_in_a_pool_keeps_what_finished(farm_home, bars):
    res = sweep(Cross, bars, {"boom": [0, 2, 0, 0, 0, 0]}, workers=2)
    assert res.interrupted and 1 <= len(res.table) < 6 and (res.table.status == "done").all()
    assert set(res.table.run_id) <= set(fk.runs().run_id[fk.runs().sweep_id == res.sweep_id])


def test_bad_grids_are_rejected_before_any_run(farm_home, bars):
    with pytest.raises(fk.ParameterError, match="no parameter.*fsat.*fast=5, slow=20"):
        sweep(Cross, bars, {"fast": [3], "fsat": [4]})
    with pytest.raises(fk.ParameterError, match="slow expects int"):
        sweep(Cross, bars, {"fast": [3], "slow": [20, "40"]})
    with pytest.raises(fk.ParameterError, match="grid\\['slow'\\] is empty"):
        sweep(Cross, bars, {"fast": [3], "slow": []})
    with pytest.raises(fk.ParameterError, match="must be a list"):
        sweep(Cross, bars, {"fast": 3})
    assert fk.runs().empty


def test_progress_bar_runs_in_a_terminal(farm_home, bars, capsys):
    res = sweep(Cross, bars, {"fast": [3]}, progress=True)
    assert res.table.status.tolist() == ["done"] and "best_sharpe" in capsys.readouterr().err


def test_plot_kind_follows_the_number_of_grid_parameters():
    table = pd.DataFrame({"fast": [3, 3, 8, 8], "slow": [20, 40, 20, 40], "mode": ["a", "b", "a", "b"],
                          "status": ["done"] * 3 + ["failed"], "sharpe": [0.5, 1.0, -0.2, math.nan]})
    heat = SweepResult("sw", "Cross", ["fast", "slow"], table).plot()
    assert isinstance(heat, go.Figure) and isinstance(heat.data[0], go.Heatmap)
    assert heat.data[0].z.shape == (2, 2)
    assert isinstance(SweepResult("sw", "Cross", ["fast"], table).plot().data[0], go.Bar)
    par = SweepResult("sw", "Cross", ["fast", "slow", "mode"], table).plot()
    assert isinstance(par.data[0], go.Parcoords) and len(par.data[0].dimensions) == 4
