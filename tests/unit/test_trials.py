"""farmkit.research.trials: families in the run registry, and PSR/DSR/MinTRL checked against the formulas."""

import math
import sys
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from farmkit import metrics
from farmkit.research import trials
from farmkit.fmel.stores import open_store

PHI = NormalDist()
GAMMA = 0.5772156649015329


def equity_from_daily_returns(returns, start="2024-01-02"):
    # One opening value, then one close per day: daily_returns gives back exactly `returns`.
    days = pd.date_range(start, periods=len(returns), freq="D", tz="UTC")
    index = pd.DatetimeIndex([days[0] + pd.Timedelta(hours=14, minutes=30)]).append(days + pd.Timedelta(hours=21))
    values = 100_000.0 * np.concatenate([[1.0], np.cumprod(1.0 + np.asarray(returns))])
    return pd.Series(values, index=index)


def by_hand(returns, n_trials, variance):
    r = np.asarray(returns)
    sr = r.mean() / r.std(ddof=1)
    m2 = ((r - r.mean()) ** 2).mean()
    skew = ((r - r.mean()) ** 3).mean() / m2 ** 1.5
    kurt = ((r - r.mean()) ** 4).mean() / m2 ** 2
    term = math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr ** 2)
    sr0 = math.sqrt(variance) * ((1 - GAMMA) * PHI.inv_cdf(1 - 1 / n_trials)
                                 + GAMMA * PHI.inv_cdf(1 - 1 / (n_trials * math.e)))
    return dict(sharpe_daily=sr, skew=skew, kurtosis=kurt,
                psr=PHI.cdf(sr * math.sqrt(len(r) - 1) / term),
                dsr=PHI.cdf((sr - sr0) * math.sqrt(len(r) - 1) / term),
                min_track_record_days=1 + term ** 2 * (PHI.inv_cdf(0.95) / sr) ** 2)


RETURNS = np.random.default_rng(3).standard_t(4, size=300) * 0.01 + 0.001


def test_honest_metrics_match_the_formulas():
    got = trials.honest_metrics(equity_from_daily_returns(RETURNS), n_trials=25, sharpe_variance=0.004)
    assert got["days"] == len(RETURNS)
    for key, value in by_hand(RETURNS, 25, 0.004).items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert got["dsr"] < got["psr"]


def test_a_single_trial_has_dsr_equal_to_psr_vs_zero():
    got = trials.honest_metrics(equity_from_daily_returns(RETURNS), n_trials=1, sharpe_variance=float("nan"))
    assert got["dsr"] == got["psr"] == pytest.approx(by_hand(RETURNS, 2, 0.0)["psr"])


def test_too_few_days_or_flat_equity_give_nan():
    short = trials.honest_metrics(equity_from_daily_returns([0.01, -0.02]), 10, 0.01)
    flat = trials.honest_metrics(equity_from_daily_returns([0.0] * 30), 10, 0.01)
    for got in (short, flat):
        assert all(math.isnan(got[k]) for k in ("sharpe_daily", "psr", "dsr", "min_track_record_days"))


def test_deflate_reproduces_the_published_example():
    # Bailey & López de Prado (2014): N=100 trials, variance of annual Sharpes 0.5, T=1250 days,
    # best annual Sharpe 2.5, skew -3, kurtosis 10, 250 days a year: DSR ~ 0.9004.
    stats = dict(sharpe_daily=2.5 / math.sqrt(250), days=1250, skew=-3.0, kurtosis=10.0)
    assert trials.deflate(stats, 100, 0.5 / 250)["dsr"] == pytest.approx(0.9004, abs=5e-5)
    assert metrics.deflated_sharpe(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, 0.5 / 250) == pytest.approx(
        0.9004, abs=5e-5)


def test_family_is_the_done_runs_of_one_strategy_and_code(farm_home):
    store = open_store(farm_home.store)
    rows = [("a", "S", "h1", "done", 1.0), ("b", "S", "h1", "done", 2.0), ("c", "S", "h1", "failed", None),
            ("d", "S", "h2", "done", 5.0), ("e", "T", "h1", "done", 5.0), ("f", "S", "h1", "done", None)]
    for i, (run_id, strategy, code, status, sharpe) in enumerate(rows):
        store.runs.upsert(run_id, agent_id=strategy, strategy=strategy, mode="backtest", status=status,
                          code_hash=code, metrics=None if status == "failed" else {"sharpe": sharpe},
                          started_at=pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(minutes=i))
    fam = trials.family(store, "S", "h1")
    assert list(fam.run_id) == ["a", "b", "f"]
    assert fam.sharpe_daily.iloc[1] == pytest.approx(2.0 / math.sqrt(252)) and math.isnan(fam.sharpe_daily.iloc[2])
    n, variance = trials.family_stats(fam.sharpe_daily)
    assert n == 3 and variance == pytest.approx(np.var([1.0, 2.0], ddof=1) / 252)
    assert trials.family_stats([0.1]) == (1, 0.0)
    assert trials.family(store, "S", "nope").empty
    # Paper runs and parity replays of the same code are not research trials.
    store.runs.upsert("g", agent_id="S", strategy="S", mode="paper", status="done", code_hash="h1",
                      metrics={"sharpe": 9.0}, started_at=pd.Timestamp("2024-01-02", tz="UTC"))
    store.runs.upsert("h", agent_id="S/parity", strategy="S", mode="backtest", status="done", code_hash="h1",
                      segment="parity", metrics={"sharpe": 9.0}, started_at=pd.Timestamp("2024-01-03", tz="UTC"))
    assert list(trials.family(store, "S", "h1").run_id) == ["a", "b", "f"]


def _version(tmp_path, name, body):
    """A strategy class named ``Cross`` from a file of its own, as each notebook cell keeps its own source."""
    import importlib.util
    import textwrap
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(f"""
        from tests.unit.test_engine import TrackedCross

        class Cross(TrackedCross):
            def next(self):
                {body}
                super().next()
    """))
    spec = importlib.util.spec_from_file_location(f"farm_trials_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # backtrader looks a strategy's module up by name
    spec.loader.exec_module(module)
    return module.Cross


def test_editing_a_strategy_in_its_notebook_keeps_its_family(farm_home, tmp_path, monkeypatch, capsys):
    import farmkit as fk

    # The notebook a Jupyter kernel runs is in JPY_SESSION_NAME.
    notebook = tmp_path / "research" / "cross.ipynb"
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    before = _version(tmp_path, "before", "pass")
    after = _version(tmp_path, "after", "self.track(edited=True)")   # one line changed
    bars = fk.data.synthetic("AAPL", days=12, seed=3)
    first = fk.backtest(before, bars)
    second = fk.backtest(after, bars)
    store = open_store(farm_home.store)
    rows = [store.runs.get(r.run_id) for r in (first, second)]
    assert rows[0]["code_hash"] != rows[1]["code_hash"]
    assert rows[0]["family"] == rows[1]["family"] == f"{notebook}::Cross"
    # Both versions are trials of one family: the edit does not start the deflation over.
    assert first.metrics["trials"] == 1 and second.metrics["trials"] == 2
    assert second.metrics["dsr"] <= second.metrics["psr"] + 1e-12

    lineage = trials.lineage(store, rows[0]["family"])
    assert list(lineage.code_hash) == [rows[0]["code_hash"], rows[1]["code_hash"]]
    assert list(lineage.trials) == [1, 1]
    assert list(lineage.best_run_id) == [first.run_id, second.run_id]
    assert lineage.best_sharpe.iloc[1] == pytest.approx(second.metrics["sharpe"])
    assert lineage.best_dsr.iloc[1] == pytest.approx(second.metrics["dsr"])
    assert (lineage.first_seen <= lineage.last_seen).all()
    # Asked by agent, the lineage is that of the agent's families.
    pd.testing.assert_frame_equal(trials.lineage(store, "Cross"), lineage)
    from farmkit import cli
    assert cli.main(["leaderboard", "--lineage", "Cross"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lineage of Cross") and rows[0]["code_hash"] in out and rows[1]["code_hash"] in out


def test_a_notebook_run_by_farm_and_a_plain_script_have_their_families(farm_home, tmp_path, monkeypatch):
    import farmkit as fk

    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    strategy = _version(tmp_path, "plain", "pass")
    bars = fk.data.synthetic("AAPL", days=4, seed=3)
    store = open_store(farm_home.store)
    script = fk.backtest(strategy, bars)
    assert store.runs.get(script.run_id)["family"] == "Cross"     # outside a notebook: the strategy name

    # `farm backtest` registers the notebook's run before it starts; every backtest in it is of that notebook.
    notebook = tmp_path / "cross.ipynb"
    store.runs.upsert("bt-queued", agent_id="cross", strategy="cross", mode="backtest", status="queued",
                      notebook=str(notebook), started_at=pd.Timestamp.now(tz="UTC"))
    settings = farm_home.replace(run_id="bt-queued")
    claimed, later = fk.backtest(strategy, bars, settings=settings), fk.backtest(strategy, bars, settings=settings)
    assert claimed.run_id == "bt-queued" and later.run_id != "bt-queued"
    assert {store.runs.get(r.run_id)["family"] for r in (claimed, later)} == {f"{notebook}::Cross"}
    assert later.metrics["trials"] == 2   # the script's run is of another family


def test_a_run_ranks_with_the_track_record_its_deflated_sharpe_needs():
    from farmkit.track_record import standing, track_record
    strong = np.random.default_rng(5).normal(0.01, 0.01, size=300)                   # Sharpe ~1 a day
    assert standing(track_record(equity_from_daily_returns(strong))) is None
    assert standing(track_record(equity_from_daily_returns([0.01, -0.02]))) == "2 daily returns; needs at least 3"
    assert standing(track_record(equity_from_daily_returns([0.0] * 30))) == "30 days of flat equity; needs returns that vary"
    young = track_record(equity_from_daily_returns(np.random.default_rng(5).normal(0.003, 0.01, size=12)))
    assert young["min_track_record_days"] > 12
    assert standing(young) == f"12 days; needs {math.ceil(young['min_track_record_days'])} for its Sharpe"
    # A losing record has an infinite minimum track record: it needs only MIN_DAYS, and ranks (low).
    losing = track_record(equity_from_daily_returns(-strong[:12]))
    assert losing["min_track_record_days"] == math.inf and standing(losing) is None
    assert standing({"sharpe": 3.0, "dsr": 0.9}).startswith("no track record measured")


def test_standing_and_score_take_a_results_metrics_series():
    """``res.metrics`` is a Series: the board's rules read it as they read the registry's dict."""
    from farmkit.leaderboard import score
    from farmkit.track_record import standing, track_record
    young = track_record(equity_from_daily_returns(np.random.default_rng(5).normal(0.003, 0.01, size=12)))
    series = pd.Series({**young, "messages": {"routed": 3}}, dtype=object)
    assert standing(series) == standing(young)
    assert score(series, "dsr") == pytest.approx(young["dsr"]) and score(series, "absent") is None
