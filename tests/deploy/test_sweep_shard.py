"""`python -m farmkit.ops.deploy shard`: what one index of the sweep's Indexed Job runs."""

from __future__ import annotations

import itertools

import nbformat
import pytest

from farmkit.ops import deploy
from farmkit.fmel.stores import open_store


def test_shards_cover_the_grid_once_and_differ_by_at_most_one():
    points = [{"fast": f, "slow": s} for f, s in itertools.product([5, 10, 20], [30, 60, 90, 120])]
    for shards in (1, 2, 5, 12, 13):
        parts = [deploy.shard_points(points, i, shards) for i in range(shards)]
        assert sorted(map(str, itertools.chain(*parts))) == sorted(map(str, points))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(deploy.DeployError, match="JOB_COMPLETION_INDEX must be below --shards"):
        deploy.shard_points(points, 3, 3)


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("fast = 5\nslow = 20"),
                nbformat.v4.new_code_cell(
                    "import backtrader as bt\nimport farmkit as fk\n"
                    "bars = fk.data.synthetic('AAPL', start='2024-01-02', days=1, freq='1min', seed=3)\n"
                    "class Cross(fk.Strategy):\n    params = dict(fast=5, slow=20)\n"
                    "    def __init__(self):\n"
                    "        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))\n"
                    "    def next(self):\n        if self.cross > 0:\n            self.buy(reason='up')\n"
                    "res = fk.backtest(Cross, bars, fast=fast, slow=slow)")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "cross.ipynb"
    nbformat.write(nb, path)
    return path


def test_one_index_runs_its_shard_under_the_sweep_id(farm_home, notebook, capsys):
    code = deploy.main(["shard", str(notebook), "--grid", "fast=5,10,15", "--grid", "slow=20", "--shards", "2",
                        "--sweep-id", "sweep-abc"], environ={"JOB_COMPLETION_INDEX": "1"})
    assert code == 0, capsys.readouterr().err
    runs = open_store(farm_home.store).runs.frame()
    mine = runs[runs.sweep_id == "sweep-abc"]
    assert len(mine) == 1 and mine.iloc[0].status == "done"      # index 1 of 2 over 3 points: the middle one
    assert '"fast": 10' in capsys.readouterr().out


def test_a_shard_without_an_index_says_where_it_comes_from(notebook, capsys):
    assert deploy.main(["shard", str(notebook), "--grid", "fast=5", "--shards", "1", "--sweep-id", "s"],
                       environ={}) == 2
    assert "JOB_COMPLETION_INDEX" in capsys.readouterr().err
