"""The FMEL query API over the embedded store: decisions, why_not, compare."""

import backtrader as bt
import pytest

import farmkit as fk


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


@pytest.fixture
def runs(farm_home):
    bars = fk.data.synthetic("AAPL", days=2, seed=4)
    return fk.backtest(Gated, bars), fk.backtest(Gated, bars, gap=0.05), bars


def test_decisions_filters(runs):
    a, _, bars = runs
    buys = fk.fmel.decisions(a.run_id, action="buy")
    assert len(buys) == (a.orders.side == "buy").sum() > 0
    assert set(buys.action) == {"buy"} and buys.reason.iloc[0] == "fast above slow"
    assert "spread" in buys.signals.iloc[0]
    everything = fk.fmel.decisions(a.run_id)
    assert set(everything.action) == {"buy", "close"}
    with_holds = fk.fmel.decisions(a.run_id, include_holds=True)
    assert len(with_holds) == len(bars["AAPL"])     # one decision per bar here
    later = fk.fmel.decisions(agent_id="Gated", start=bars["AAPL"].index[400])
    assert (later.timestamp >= bars["AAPL"].index[400]).all() and later.run_id.nunique() == 2


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
    with pytest.raises(KeyError, match="self.condition"):
        fk.fmel.why_not(fk.backtest(fk.Strategy, bars).run_id, bar=5)


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
