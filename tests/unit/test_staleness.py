"""Per-symbol staleness against market hours: the calendar, the ages and the threshold, on a test clock."""

import backtrader as bt
import pandas as pd
import pytest

from farmkit.live.staleness import (
    AlwaysOpen,
    Staleness,
    UsEquityHours,
    calendar_for,
    default_stale_after,
)


def at(text: str) -> float:
    return pd.Timestamp(text, tz="America/New_York").timestamp()


@pytest.mark.parametrize("when, open_", [
    ("2024-01-02 09:29:59", False), ("2024-01-02 09:30:00", True), ("2024-01-02 12:00", True),
    ("2024-01-02 15:59:59", True), ("2024-01-02 16:00:00", False), ("2024-01-02 03:00", False),
    ("2024-01-06 12:00", False), ("2024-01-07 12:00", False),        # Saturday, Sunday
    ("2024-01-08 09:45", True),                                       # Monday again
    ("2024-07-01 09:30", True), ("2024-07-01 09:29", False),          # summer time: 13:30 UTC
    ("2024-03-11 09:30", True), ("2024-11-04 09:29", False),          # the Mondays after the clock changes
])
def test_us_equity_hours_are_the_new_york_regular_session_on_weekdays(when, open_):
    assert UsEquityHours().is_open(at(when)) is open_


def test_us_equity_hours_keep_the_right_answer_while_the_clock_moves_across_boundaries():
    hours, fresh = UsEquityHours(), UsEquityHours
    start = at("2024-01-05 08:00")      # a Friday morning, through the weekend
    for minute in range(0, 4 * 24 * 60, 7):
        now = start + minute * 60
        assert hours.is_open(now) == fresh().is_open(now), pd.Timestamp(now, unit="s", tz="America/New_York")


def test_what_the_simple_calendar_ignores_holidays_and_early_closes():
    # Documented: 2024-12-25 (closed) reads open, and 2024-11-29 (closes 13:00) reads open at 15:00.
    assert UsEquityHours().is_open(at("2024-12-25 11:00"))
    assert UsEquityHours().is_open(at("2024-11-29 15:00"))


def test_crypto_pairs_are_always_open_and_other_symbols_are_us_equities():
    assert isinstance(calendar_for("BTC/USD"), AlwaysOpen) and isinstance(calendar_for("AAPL"), UsEquityHours)
    assert calendar_for("ETH/USD").is_open(at("2024-01-06 03:00"))


def test_default_threshold_is_three_bar_sizes():
    assert default_stale_after(bt.TimeFrame.Minutes, 1) == 180.0
    assert default_stale_after(bt.TimeFrame.Minutes, 5) == 900.0
    assert default_stale_after(bt.TimeFrame.Seconds, 10) == 30.0


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def test_a_symbol_is_stale_when_its_market_is_open_and_no_bar_came_for_longer_than_the_threshold():
    clock = Clock(at("2024-01-02 10:00"))
    staleness = Staleness(["AAPL", "BTC/USD"], stale_after=3.0, clock=clock)
    assert staleness.stale() == {}
    clock.now += 3.0
    assert staleness.stale() == {}                           # at the threshold, not past it
    clock.now += 0.5
    assert staleness.stale() == {"AAPL": 3.5, "BTC/USD": 3.5}   # nothing since the start
    staleness.arrived("AAPL")
    staleness.arrived("BTC/USD", at=clock.now - 1.0)
    assert staleness.stale() == {}
    clock.now += 2.5
    assert staleness.stale() == {"BTC/USD": 3.5}
    assert staleness.ages() == {"AAPL": 2.5, "BTC/USD": 3.5}


def test_a_closed_market_makes_no_symbol_stale_but_its_age_is_still_reported():
    clock = Clock(at("2024-01-06 12:00"))     # Saturday
    staleness = Staleness(["AAPL", "BTC/USD"], stale_after=60.0, clock=clock)
    clock.now += 3600
    assert staleness.stale() == {"BTC/USD": 3600.0}
    report = staleness.report()
    assert report["stale_after"] == 60.0 and report["stale_symbols"] == {"BTC/USD": 3600.0}
    assert report["symbols"]["AAPL"] == {"age": 3600.0, "open": False, "stale": False}
    assert report["symbols"]["BTC/USD"] == {"age": 3600.0, "open": True, "stale": True}


def test_calendars_can_be_given_and_the_threshold_must_be_positive():
    clock = Clock(at("2024-01-06 12:00"))
    staleness = Staleness(["AAPL"], stale_after=1.0, calendars={"AAPL": AlwaysOpen()}, clock=clock)
    clock.now += 2
    assert staleness.stale() == {"AAPL": 2.0}
    with pytest.raises(ValueError, match="seconds > 0"):
        Staleness(["AAPL"], stale_after=0)
