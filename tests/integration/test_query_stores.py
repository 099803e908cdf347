"""The FMEL query API (load, decisions, explain, why_not, compare, sql, runs): the same cases on the
embedded store and on the BigQuery store (against the BigQuery API emulator)."""

import backtrader as bt
import pandas as pd
import pytest

import farmkit as fk
from tests.bigquery_emulator import bigquery_emulator  # noqa: F401 - fixture


class Gated(fk.Strategy):
    params = dict(fast=5, slow=20, gap=0.0)

    def __init__(self):
        self.fast, self.slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)

    def next(self):
        spread = self.fast[0] - self.slow[0]
        above = self.condition("fast above slow", spread, ">", self.p.gap)
        flat = self.condition("no position", self.position.size, "<=", 0)
        if above and flat:
            self.buy(size=1, reason="fast above slow", signals={"spread": spread})
        elif not above and self.position:
            self.close(reason="fast fell below slow")


@pytest.fixture(params=["local", "bigquery"])
def store_url(request, farm_home, monkeypatch):
    """FARM_STORE for the test: the embedded store under FARM_HOME, or a fresh BigQuery dataset."""
    if request.param == "bigquery":
        emulator = request.getfixturevalue("bigquery_emulator")
        monkeypatch.setenv("FARM_STORE", emulator.url())
    return fk.Settings.from_env().store


@pytest.fixture
def runs(store_url):
    bars = fk.data.synthetic("AAPL", days=2, seed=4)
    return fk.backtest(Gated, bars), fk.backtest(Gated, bars, gap=0.05), bars


def test_the_store_is_the_one_asked_for(runs, store_url):
    a, _, _ = runs
    assert a.store.scheme == store_url.split("://")[0]


def test_decisions_filters(runs):
    a, _, bars = runs
    buys = fk.fmel.decisions(a.run_id, action="buy")
    assert len(buys) == (a.orders.side == "buy").sum() > 0
    assert set(buys.action) == {"buy"} and buys.reason.iloc[0] == "fast above slow"
    assert "spread" in buys.signals.iloc[0]
    everything = fk.fmel.decisions(a.run_id)
    assert set(everything.action) == {"buy", "close"}
    assert everything.bar_number.is_monotonic_increasing
    with_holds = fk.fmel.decisions(a.run_id, include_holds=True)
    assert len(with_holds) == len(bars["AAPL"])     # one decision per bar here
    assert with_holds.signals[with_holds.action == "hold"].isna().all()
    later = fk.fmel.decisions(agent_id="Gated", start=bars["AAPL"].index[400])
    assert (later.timestamp >= bars["AAPL"].index[400]).all() and later.run_id.nunique() == 2
    window = fk.fmel.decisions(a.run_id, start=bars["AAPL"].index[100], end=bars["AAPL"].index[300],
                               include_holds=True)
    assert len(window) == 201
    assert fk.fmel.decisions(a.run_id, symbol="MSFT").empty
    assert len(fk.fmel.decisions(a.run_id, symbol="AAPL")) == len(everything)


def test_explain_a_bar_by_number_and_by_time(runs):
    a, _, bars = runs
    buy = fk.fmel.decisions(a.run_id, action="buy").iloc[0]
    table = fk.fmel.explain(a.run_id, bar=int(buy.bar_number))
    assert table.attrs["bar_number"] == buy.bar_number
    decision = table.loc["decision"]
    assert decision.index[0].startswith("buy AAPL size=1") and "because fast above slow" in decision.value.iloc[0]
    assert "close=" in table.loc[("market", "AAPL"), "value"]
    by_time = fk.fmel.explain(a.run_id, timestamp=bars["AAPL"].index[int(buy.bar_number)] + pd.Timedelta("30s"))
    assert by_time.attrs["bar_number"] == buy.bar_number
    with pytest.raises(KeyError, match="has no bar 99999"):
        fk.fmel.explain(a.run_id, bar=99999)


def test_why_not_shows_how_far_each_condition_was(runs):
    a, _, bars = runs
    holds = fk.fmel.decisions(a.run_id, include_holds=True)
    closes = bars["AAPL"]["close"].to_numpy()
    spread_at = lambda b: closes[b - 4:b + 1].mean() - closes[b - 19:b + 1].mean()
    bar = next(int(b) for b in holds[holds.action == "hold"].bar_number if b > 30 and spread_at(b) < 0)
    table = fk.fmel.why_not(a.run_id, bar=bar).set_index("condition")
    spread = table.loc["fast above slow"]
    assert spread.value == pytest.approx(spread_at(bar)) and not spread.met
    assert spread.distance == pytest.approx(-spread_at(bar))      # how far below the 0 threshold
    assert table.attrs["traded"] is False
    bare = fk.fmel.why_not(fk.backtest(fk.Strategy, bars).run_id, bar=5)    # no conditions: says how to add them
    assert "self.condition" in bare.attrs["hint"] and not (bare.kind == "condition").any()


def test_compare_finds_the_first_differing_decision(runs):
    a, b, _ = runs
    same = fk.fmel.compare(a.run_id, a.run_id)
    assert same.identical
    diff = fk.fmel.compare(a.run_id, b.run_id)
    assert not diff.identical
    first = diff.differences.iloc[0]
    records = fk.fmel.load(a.run_id)
    assert records.decisions.iloc[int(first.bar_a)] != fk.fmel.load(b.run_id).decisions.iloc[int(first.bar_b)]
    assert list(diff.side_by_side.columns) == [a.run_id, b.run_id]
    assert "first differ at" in str(diff)


def test_load_sql_and_runs(runs):
    a, b, bars = runs
    records = fk.fmel.load(a.run_id)
    assert list(records.bar_number) == list(range(len(bars["AAPL"])))
    assert (records.record_id == a.run_id + ":" + records.bar_number.astype(str)).all()
    counts = fk.fmel.sql("SELECT run_id, count(*) AS n FROM fmel GROUP BY run_id ORDER BY run_id")
    assert dict(zip(counts.run_id, counts.n)) == {a.run_id: len(bars["AAPL"]), b.run_id: len(bars["AAPL"])}
    joined = fk.fmel.sql("WITH r AS (SELECT run_id, status FROM runs) "
                         "SELECT r.status, count(*) AS n FROM fmel JOIN r USING (run_id) GROUP BY r.status")
    assert list(joined.status) == ["done"] and joined.n.iloc[0] == 2 * len(bars["AAPL"])
    table = fk.fmel.runs()
    assert set(table.run_id) == {a.run_id, b.run_id} and set(table.status) == {"done"}
    assert table.set_index("run_id").loc[b.run_id, "params"] == {"gap": 0.05}
    assert fk.fmel.load("no-such-run").empty
