"""Why-not includes the broker: an order refused for margin, a sizer that gave size 0, and a fallback
to tracked values and recent decisions when the strategy recorded no conditions; also over REST."""

import backtrader as bt
import pytest

import farmkit as fk


class Greedy(fk.Strategy):
    """Buys far more than the cash allows once, on a condition that holds."""

    params = dict(size=10_000, at=40)

    def __init__(self):
        self.sma = bt.ind.SMA(period=5)
        self.track(sma=self.sma)

    def next(self):
        if len(self) == self.p.at and self.condition("after warm-up", len(self), ">=", self.p.at):
            self.buy(size=self.p.size, reason="all in")


class Quiet(fk.Strategy):
    """Trades on an SMA cross, records no conditions."""

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=3), bt.ind.SMA(period=12))
        self.track(cross=self.cross)

    def next(self):
        if self.cross > 0:
            self.buy(size=1, reason="up")
        elif self.cross < 0 and self.position:
            self.close(reason="down")


class Nothing(bt.Sizer):
    def _getsizing(self, comminfo, cash, data, isbuy):
        return 0


@pytest.fixture
def day():
    return fk.data.synthetic("AAPL", days=1, seed=4)


def _decided_bar(res, action="buy"):
    decided = fk.fmel.decisions(res.run_id, action=action)
    return int(decided.bar_number.iloc[0])


def test_a_buy_refused_for_margin_is_the_reason(farm_home, day):
    res = fk.backtest(Greedy, day, cash=10_000)
    bar = _decided_bar(res)
    table = fk.fmel.why_not(res.run_id, bar=bar)
    assert table.query("kind == 'condition'").met.all()           # every condition held ...
    refused = table.query("kind == 'broker'")
    assert len(refused) == 1 and "margin" in refused.detail.iloc[0]   # ... and the broker said no
    assert table.attrs["traded"] is False and "margin" in table.attrs["refused"][0]


def test_a_sizer_that_gives_nothing_is_the_reason(farm_home, day):
    class Sized(Greedy):
        def next(self):
            if len(self) == self.p.at:
                self.buy(reason="sized")

    res = fk.backtest(Sized, day, sizer=Nothing)
    table = fk.fmel.why_not(res.run_id, bar=_decided_bar(res))
    assert "size came out as 0" in table.query("kind == 'broker'").detail.iloc[0]


def test_without_conditions_it_shows_tracked_values_and_recent_decisions(farm_home, day):
    res = fk.backtest(Quiet, day)
    later = int(fk.fmel.decisions(res.run_id).bar_number.iloc[2]) + 1
    table = fk.fmel.why_not(res.run_id, bar=later)
    assert table.query("kind == 'tracked'").condition.tolist() == ["cross"]
    recent = table.query("kind == 'recent'")
    assert len(recent) == 3 and all(" because " in d for d in recent.detail)
    assert "self.condition" in table.attrs["hint"]


def test_why_not_over_rest(farm_home, day, tmp_path):
    from fastapi.testclient import TestClient

    from farmkit.api.app import create_app
    from farmkit.api.settings import ApiSettings

    res = fk.backtest(Greedy, day, cash=10_000)
    bar = _decided_bar(res)
    app = create_app(farm_home, ApiSettings(token="t0ken", agents=str(tmp_path / "agents")))
    reply = TestClient(app).get(f"/api/fmel/runs/{res.run_id}/bars/{bar}/why-not",
                                headers={"Authorization": "Bearer t0ken"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["bar_number"] == bar and body["traded"] is False and "margin" in body["refused"][0]
    assert {r["kind"] for r in body["rows"]} == {"condition", "broker"}
