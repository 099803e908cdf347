"""A sweep with a split puts its out-of-sample runs on the leaderboard, with their out-of-sample
figures, and none of its in-sample trials (real redis-server on loopback)."""

import json

import backtrader as bt
import pytest

import farmkit as fk
from farmkit import leaderboard
from farmkit.research.sweep import sweep
from tests.redis_server import redis_server  # noqa: F401  (the session fixture)


class Cross(fk.Strategy):
    params = dict(fast=5, slow=20)

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))

    def next(self):
        if self.cross > 0:
            self.buy(size=10, reason="fast above slow")
        elif self.cross < 0 and self.position:
            self.close(reason="fast below slow")


@pytest.fixture
def settings(farm_home, redis_server):
    redis_server.flush()
    return farm_home.replace(redis=redis_server.url)


def _on_board(client, run_id: str) -> bool:
    return bool(client.exists(f"farm:run:{run_id}"))


def test_a_split_sweep_publishes_the_out_of_sample_run_and_no_in_sample_trial(settings):
    bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=80, freq="1D", seed=3)
    res = sweep(Cross, bars, {"fast": [2, 4], "slow": [20]}, split=0.7, warmup_bars=30, settings=settings)
    client = leaderboard.connect(settings)
    in_sample = list(res.table.run_id)
    (oos_run,) = res.oos.oos_run_id
    assert len(in_sample) == 2 and (res.table.segment == "in_sample").all()
    assert not any(_on_board(client, run_id) for run_id in in_sample)
    assert _on_board(client, oos_run)
    recorded = json.loads(client.hget(f"farm:run:{oos_run}", "metrics"))
    row = res.oos.iloc[0]
    assert recorded["sharpe"] == pytest.approx(row.oos_sharpe) and recorded["warmup_bars"] == 30
    assert client.hget(f"farm:run:{oos_run}", "segment") == "out_of_sample"

    # A rebuild from the registry keeps it that way.
    leaderboard.rebuild(settings, clear=True)
    assert _on_board(client, oos_run) and not any(_on_board(client, run_id) for run_id in in_sample)


def test_a_sweep_without_a_split_still_publishes_every_trial(settings):
    bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=60, freq="1D", seed=3)
    res = sweep(Cross, bars, {"fast": [2, 4], "slow": [20]}, settings=settings)
    client = leaderboard.connect(settings)
    assert all(_on_board(client, run_id) for run_id in res.table.run_id)
