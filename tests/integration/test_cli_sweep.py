"""`farm sweep`: fixed parameters, TPE search, and a parameter given twice."""

from pathlib import Path

import pandas as pd

import farmkit as fk
from farmkit import cli

ROOT = Path(__file__).resolve().parents[2]
SMA = ROOT / "notebooks" / "strategies" / "sma_crossover.ipynb"


def _trials():
    runs = fk.runs()
    return runs[runs.sweep_id.notna()]


def test_a_grid_parameter_given_twice_is_an_error_that_names_it(farm_home, capfd):
    code = cli.main(["sweep", str(SMA), "--grid", "fast=3,5", "--grid", "slow=20", "--grid", "fast=8",
                     "--grid", "days=2", "--no-progress"])
    err = capfd.readouterr().err
    assert code == 1
    assert "--grid fast given twice" in err and "fast=3,5" in err and "fast=8" in err
    assert fk.runs().empty


def test_a_parameter_both_swept_and_fixed_is_an_error(farm_home, capfd):
    code = cli.main(["sweep", str(SMA), "--grid", "fast=3,5", "-p", "fast=4", "--no-progress"])
    assert code == 1 and "fast given both" in capfd.readouterr().err
    code = cli.main(["sweep", str(SMA), "--grid", "fast=3,5", "--trials", "3", "--no-progress"])
    assert code == 1 and "go with --search tpe" in capfd.readouterr().err
    assert fk.runs().empty


def test_a_seeded_split_search_runs_its_trials_in_sample_and_the_best_out_of_sample(farm_home, capfd):
    # One notebook sweep (kernels are slow to start) for -p, --search tpe, --seed, --constraint and --split.
    code = cli.main(["sweep", str(SMA), "--search", "tpe", "--trials", "2", "--seed", "4", "--grid", "fast=2..40",
                     "--grid", "slow=10,20,30", "--constraint", "fast < slow", "-p", "days=4", "-p", "symbols=AAPL",
                     "--split", "0.5", "--warmup-bars", "30", "--no-progress"])
    out, _ = capfd.readouterr()
    assert code == 0, out
    runs = fk.runs().set_index("run_id")
    in_sample = runs[runs.segment == "in_sample"].sort_values("started_at")
    (oos_id,) = runs.index[runs.segment == "out_of_sample"]
    oos = runs.loc[oos_id]
    assert len(in_sample) == 2 and (in_sample.status == "done").all() and oos.status == "done"
    assert f"sweep {oos.sweep_id}: 2 trials, 2 done" in out and "PBO not measured" in out   # 2 days say nothing

    # The trials: seeded TPE points that meet the constraint, with the fixed parameters.
    table = pd.read_csv(farm_home.home / "sweeps" / oos.sweep_id / "trials.csv")
    assert list(table.run_id) == list(in_sample.index)
    assert (table.days == 4).all() and (table.symbols == "['AAPL']").all() and (table.segment == "in_sample").all()
    points = list(zip(table.fast, table["slow"]))
    assert len(set(points)) == 2 and all(f < s for f, s in points) and set(table["slow"]) <= {10, 20, 30}
    from farmkit.research.notebooks import search_space
    from farmkit.research.search import TpeSearch, constraint
    space, _ = search_space(SMA, {"fast": "2..40", "slow": ["10", "20", "30"]})
    first = TpeSearch(space, 2, seed=4, constraints=constraint("fast < slow")).ask(1)[0]
    assert (first["fast"], first["slow"]) == points[0]

    # In sample: the first two days; the best of them out of sample, on the last two after a warm-up.
    assert all(s["side"] == "in_sample" and s["split"] == 0.5 for s in in_sample.split)
    assert set(in_sample.bars) == {780} and oos.bars == 780 + 30
    assert oos.split["side"] == "out_of_sample" and oos.split["oos_start"] > oos.split["is_end"]
    assert oos.metrics["warmup_bars"] == 30 and "sharpe" in oos.metrics
    best = table.loc[table.sharpe.idxmax()]
    assert (oos.params["fast"], oos.params["slow"]) == (best.fast, best["slow"])
    assert (farm_home.home / "sweeps" / oos.sweep_id / "oos.csv").exists()
    assert "chosen in sample, run out of sample" in out and "out-of-sample" in out
