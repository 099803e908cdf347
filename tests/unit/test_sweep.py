"""farmkit.research.sweep: one recorded backtest per grid point, in-process or in forked workers."""

import json
import math
import os
import sqlite3
from contextlib import closing

import backtrader as bt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import farmkit as fk
from farmkit.fmel import schema
from farmkit.fmel.registry import RunRegistry
from farmkit.research.split import WalkForward, walk_forward
from farmkit.research.sweep import SweepResult, sweep


class Cross(fk.Strategy):
    params = dict(fast=5, slow=20, boom=0)

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))

    def next(self):
        if self.p.boom == 1 and len(self) == 30:
            raise ZeroDivisionError("boom at 30")
        if self.p.boom == 2 and len(self) == 30:
            raise KeyboardInterrupt  # stands in for Ctrl-C in the middle of a trial
        if self.p.boom == 3 and len(self) == 30:
            os._exit(3)     # the worker process dies (a crash in C code, the OOM killer)
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


def test_a_worker_that_dies_loses_only_its_own_trial(farm_home, bars):
    grid = {"boom": [0, 0, 3, 0, 0, 0]}
    res = sweep(Cross, bars, grid, workers=2, fast=3)
    assert not res.interrupted
    assert list(res.table.status) == ["done", "done", "failed", "done", "done", "done"]
    assert "process died" in res.table.error[2] and "exit code 3" in res.table.error[2]
    runs = fk.runs()
    mine = runs[runs.sweep_id == res.sweep_id]
    assert set(res.table.run_id[res.table.status == "done"]) == set(mine.run_id)
    assert not (runs.status == "running").any()     # the dead trial's run reads as killed, not running


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


def _equity(run_id: str) -> pd.Series:
    """A run's equity curve as FMEL recorded it."""
    records = fk.fmel.load(run_id)
    values = records.performance.map(lambda p: json.loads(p)["equity"]).to_numpy(dtype="float64")
    return pd.Series(values, index=pd.DatetimeIndex(records.timestamp).tz_convert("UTC"))


def test_split_chooses_in_sample_and_reports_out_of_sample(farm_home, bars):
    times = bars["AAPL"].index
    cut = times[int(0.7 * len(times))]
    res = sweep(Cross, bars, GRID, split=0.7, warmup_bars=30, sweep_id="sw-split")
    table, oos = res.table, res.oos
    assert len(table) == 4 and (table.segment == "in_sample").all() and len(oos) == 1
    best = table.loc[table.sharpe.idxmax()]
    row = oos.iloc[0]
    assert (row.fast, row.slow, row.is_run_id, row.is_sharpe) == (best.fast, best.slow, best.run_id, best.sharpe)
    assert (row.oos_start, row.is_end) == (cut, times[int(0.7 * len(times)) - 1]) and row.oos_end == times[-1]

    runs = fk.runs().set_index("run_id")
    assert len(runs) == 5 and (runs.sweep_id == "sw-split").all()
    assert runs.segment.value_counts().to_dict() == {"in_sample": 4, "out_of_sample": 1}
    assert runs.loc[row.oos_run_id, "segment"] == "out_of_sample"
    assert runs.loc[row.oos_run_id, "params"] == {"fast": best.fast, "slow": best.slow}
    for run_id in table.run_id:  # the grid never saw a bar of the out-of-sample side
        assert _equity(run_id).index.max() < cut

    # The out-of-sample run got 30 bars of warm-up; its figures start at the cut.
    equity = _equity(row.oos_run_id)
    assert equity.index[0] == times[int(0.7 * len(times)) - 30] and equity.index[-1] == times[-1]
    after = equity[equity.index >= cut]
    assert row.oos_total_return == pytest.approx(after.iloc[-1] / after.iloc[0] - 1)
    assert res.oos_equity.index.equals(after.index)
    assert res.oos_equity.iloc[0] == pytest.approx(100_000.0)
    assert res.oos_equity.to_numpy() == pytest.approx(after.to_numpy() * 100_000.0 / after.iloc[0])
    stored = runs.loc[row.oos_run_id, "metrics"]
    assert stored["total_return"] == pytest.approx(row.oos_total_return) and stored["warmup_bars"] == 30
    assert stored["trades"] == row.oos_trades and res.oos_summary["total_return"] == pytest.approx(
        row.oos_total_return)

    summary = res.summary()
    assert summary.loc[1, ("sharpe", "in-sample")] == best.sharpe
    assert summary.loc[1, ("sharpe", "out-of-sample")] == row.oos_sharpe
    assert "Out of sample" in res._repr_html_()


def test_walk_forward_runs_one_out_of_sample_per_window(farm_home, bars):
    res = sweep(Cross, bars, {"fast": [3, 8]}, split=WalkForward(windows=3), warmup_bars=20, workers=2)
    windows = walk_forward(bars, 3)
    oos = res.oos
    assert list(oos.window) == [1, 2, 3] and oos.oos_error.isna().all()
    assert list(oos.oos_start) == [w.oos_start for w in windows]
    assert list(res.table.segment) == [f"wf{k}/in_sample" for k in (1, 2, 3) for _ in range(2)]
    for k, row in enumerate(oos.itertuples(), start=1):
        in_sample = res.table[res.table.segment == f"wf{k}/in_sample"]
        assert row.fast == in_sample.loc[in_sample.sharpe.idxmax(), "fast"]
    runs = fk.runs().set_index("run_id")
    assert list(runs.loc[oos.oos_run_id, "segment"]) == ["wf1/out_of_sample", "wf2/out_of_sample",
                                                         "wf3/out_of_sample"]
    assert (runs.sweep_id == res.sweep_id).all() and len(runs) == 9
    stitched = res.oos_equity
    assert stitched.index.is_unique and stitched.index.is_monotonic_increasing
    assert stitched.index[0] == windows[0].oos_start and stitched.index[-1] == windows[-1].oos_end
    assert res.oos_summary["windows"] == 3
    assert res.oos_summary["total_return"] == pytest.approx(np.prod(1 + oos.oos_total_return) - 1)


def test_bad_splits_are_rejected_before_any_run(farm_home, bars):
    with pytest.raises(fk.ParameterError, match="between 0 and 1"):
        sweep(Cross, bars, GRID, split=1.5)
    with pytest.raises(fk.ParameterError, match="outside the data"):
        sweep(Cross, bars, GRID, split="2025-01-01")
    with pytest.raises(fk.ParameterError, match="warmup_bars"):
        sweep(Cross, bars, GRID, split=0.7, warmup_bars=-5)
    with pytest.raises(fk.ParameterError, match="needs split="):
        sweep(Cross, bars, GRID, warmup_bars=5)
    with pytest.raises(fk.ParameterError, match="select='shrape' is not a metric"):
        sweep(Cross, bars, GRID, split=0.7, select="shrape")
    assert fk.runs().empty


def test_an_old_registry_gains_the_new_columns(tmp_path):
    path = tmp_path / "registry.sqlite"
    # The table as farmkit wrote it before runs had a segment.
    old = ", ".join(f["name"] + (" TEXT PRIMARY KEY" if f["name"] == "run_id" else " TEXT")
                    for f in schema.fields("runs") if f["name"] != "segment")
    with closing(sqlite3.connect(path)) as con, con:
        con.execute(f"CREATE TABLE runs ({old})")
        con.execute("INSERT INTO runs (run_id, agent_id, strategy, mode, status, started_at) "
                    "VALUES ('bt-old', 'Cross', 'Cross', 'backtest', 'done', '2024-01-02T00:00:00+00:00')")
    registry = RunRegistry(path)
    RunRegistry(path)  # opening it again finds nothing to add
    assert registry.get("bt-old")["segment"] is None
    registry.upsert("bt-old", segment="out_of_sample")
    assert registry.get("bt-old")["segment"] == "out_of_sample" and registry.get("bt-old")["status"] == "done"


def test_a_window_whose_trials_all_failed_has_no_out_of_sample_run(farm_home, bars):
    res = sweep(Cross, bars, {"boom": [1]}, split=0.5, fast=3)
    assert list(res.table.status) == ["failed"] and res.oos_summary is None and res.oos_equity is None
    assert res.oos.oos_error.iloc[0] == "in sample: no done trial has a sharpe" and res.oos.oos_run_id.isna().all()
    assert list(fk.runs().segment) == ["in_sample"]
    with pytest.raises(ValueError, match="without split="):
        sweep(Cross, bars, {"fast": [3]}).summary()
