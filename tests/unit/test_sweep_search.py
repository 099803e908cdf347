"""fk.sweep(search="tpe"): Optuna's TPE picks the trials; every trial run is registered and deflated,
infeasible points never run, and a seed gives the same trials in the same order. Sweeps keep each
trial's daily returns and report the Probability of Backtest Overfitting."""

import math

import backtrader as bt
import numpy as np
import pytest

import farmkit as fk
from farmkit.research import trials
from farmkit.research.overfit import pbo
from farmkit.research.search import Float, Int, TpeSearch
from farmkit.research.sweep import sweep


class Cross(fk.Strategy):
    params = dict(fast=5, slow=20, stake=10.0)

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))

    def next(self):
        if self.cross > 0:
            self.buy(size=self.p.stake, reason="fast above slow")
        elif self.cross < 0 and self.position:
            self.close(reason="fast below slow")


SPACE = {"fast": (2, 12), "slow": Int(10, 40, step=2)}


def fast_below_slow(p):
    return p["fast"] < p["slow"]


@pytest.fixture(scope="module")
def bars():
    # Daily bars: enough days for PBO with 16 blocks, few bars per trial.
    return fk.data.synthetic(["AAPL"], start="2024-01-02", days=80, freq="1D", seed=3)


def test_a_seeded_search_runs_the_same_feasible_trials_in_the_same_order(farm_home, bars):
    first = sweep(Cross, bars, SPACE, search="tpe", n_trials=5, seed=11, constraints=fast_below_slow)
    again = sweep(Cross, bars, SPACE, search="tpe", n_trials=5, seed=11, constraints=fast_below_slow)
    points = list(first.table[["fast", "slow"]].itertuples(index=False, name=None))
    assert points == list(again.table[["fast", "slow"]].itertuples(index=False, name=None))
    assert len(points) == 5 == len(set(points)) and all(f < s for f, s in points)
    assert (first.table.status == "done").all()
    runs = fk.runs()
    assert set(first.table.run_id) == set(runs.run_id[runs.sweep_id == first.sweep_id])   # only trials ran
    other = sweep(Cross, bars, SPACE, search="tpe", n_trials=5, seed=12, constraints=fast_below_slow)
    assert list(other.table[["fast", "slow"]].itertuples(index=False, name=None)) != points


def test_every_sampled_trial_is_counted_in_the_deflated_sharpe(farm_home, bars):
    res = sweep(Cross, bars, {"fast": [2, 3, 4, 5], "slow": (20, 30)}, search="tpe", n_trials=4, seed=1)
    table = res.table
    n_trials, variance = trials.family_stats(table.sharpe_daily)
    assert n_trials == 4
    for row in table.to_dict("records"):
        assert row["dsr"] == pytest.approx(trials.deflate(row, n_trials, variance)["dsr"])
    assert (table.dsr <= table.psr).all()


def test_sweeps_keep_daily_returns_and_report_pbo(farm_home, bars):
    res = sweep(Cross, bars, {"fast": [2, 4, 6], "slow": [20]})
    assert list(res.returns.columns) == list(res.table.run_id) and len(res.returns) == 80
    assert res.pbo is not None and res.pbo.n_trials == 3 and res.pbo.n_splits == 16
    assert res.pbo.pbo == pbo(res.returns, n_splits=16).pbo
    assert f"PBO {res.pbo.pbo:.2f}" in res.overfitting() and "PBO" in res._repr_html_()


def test_a_search_with_a_split_chooses_in_sample_and_reports_pbo_out_of_sample(farm_home, bars):
    res = sweep(Cross, bars, SPACE, search="tpe", n_trials=3, seed=5, constraints=fast_below_slow, split=0.7,
                warmup_bars=40)
    assert len(res.table) == 3 and (res.table.segment == "in_sample").all()
    assert len(res.oos) == 1 and res.oos.oos_error.isna().all()
    best = res.table.loc[res.table.sharpe.idxmax()]
    assert (res.oos.fast.iloc[0], res.oos.slow.iloc[0]) == (best.fast, best.slow)
    assert "pbo" in res.summary().columns.get_level_values(0)


def test_space_mistakes_are_rejected_before_any_run(farm_home, bars):
    with pytest.raises(fk.ParameterError, match="needs n_trials"):
        sweep(Cross, bars, SPACE, search="tpe")
    with pytest.raises(fk.ParameterError, match="go with search='tpe'"):
        sweep(Cross, bars, {"fast": [2, 3]}, n_trials=3)
    with pytest.raises(fk.ParameterError, match="not a search.*grid, tpe"):
        sweep(Cross, bars, SPACE, search="random", n_trials=3)
    with pytest.raises(fk.ParameterError, match="space\\['fast'\\] must be"):
        sweep(Cross, bars, {"fast": 3}, search="tpe", n_trials=3)
    with pytest.raises(fk.ParameterError, match="Int needs whole numbers"):
        Int(2, 7.5)
    with pytest.raises(fk.ParameterError, match="given both"):
        sweep(Cross, bars, SPACE, search="tpe", n_trials=3, fast=3)
    with pytest.raises(fk.ParameterError, match="constraints must be functions"):
        sweep(Cross, bars, SPACE, search="tpe", n_trials=3, constraints="fast < slow")
    with pytest.raises(fk.ParameterError, match="slow expects int"):
        sweep(Cross, bars, {"slow": (10.0, 20.0)}, search="tpe", n_trials=3)
    assert fk.runs().empty


def test_the_search_stops_when_the_space_has_no_more_distinct_feasible_points():
    search = TpeSearch({"fast": [2, 3, 4], "stake": Float(1.0, 2.0, step=0.5)}, n_trials=50, seed=0,
                       constraints=[lambda p: p["fast"] != 4])
    seen = []
    while not search.finished:
        batch = search.ask(2)
        for point in batch:
            search.tell(point, float(point["fast"]))
        seen += batch
    assert search.exhausted and len(seen) == 6 == len({tuple(p.values()) for p in seen})
    assert all(p["fast"] != 4 for p in seen) and {p["stake"] for p in seen} == {1.0, 1.5, 2.0}
    assert not any(math.isnan(p["stake"]) for p in seen) and np.isin([p["fast"] for p in seen], [2, 3]).all()


def test_a_search_of_a_small_space_ends_once_every_point_ran():
    search = TpeSearch({"fast": [2, 3], "slow": Int(20, 30, step=10)}, n_trials=10, seed=0)
    seen = []
    while not search.finished:
        batch = search.ask(3)
        for point in batch:
            search.tell(point, None)   # failed trials count as run too
        seen += batch
    assert search.exhausted and sorted(tuple(p.values()) for p in seen) == [(2, 20), (2, 30), (3, 20), (3, 30)]
