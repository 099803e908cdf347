"""Holes in a paper run's bars: found from the bars themselves (a night is not a hole), filled from a
backfill source before the bar that revealed them, recorded as a gap when the source has nothing;
every filled bar is marked, and the original, if it comes after all, is a duplicate."""

import json

import pandas as pd
import pytest

from farmkit.errors import ConfigError
from farmkit.live.backfill import Backfill, missing_span, open_source
from farmkit.live.router import BarRouter
from farmkit.live.staleness import calendar_for
from farmkit.model import Bar
from farmkit.settings import Settings
from tests.unit.test_bus_input import Feed

DAY = pd.Timestamp("2024-01-03 15:00", tz="UTC")       # a Wednesday, New York open
NYSE = calendar_for("AAPL")


def at(i: int) -> pd.Timestamp:
    return DAY + pd.Timedelta(minutes=i)


def bar(i: int, source: str = "test") -> Bar:
    return Bar("AAPL", at(i), 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 1000, source=source)


def wire(i: int) -> bytes:
    b = bar(i)
    return json.dumps({"type": "bar", "symbol": "AAPL", "timestamp": b.timestamp.isoformat(), "open": b.open,
                       "high": b.high, "low": b.low, "close": b.close, "volume": b.volume,
                       "source": "test"}).encode()


class Source:
    """A market archive in memory; ``fail`` makes it raise, as a source that cannot answer does."""

    name = "archive"

    def __init__(self, bars=(), fail=None):
        self.held = {b.timestamp: b for b in bars}
        self.fail = fail
        self.asked = []

    def bars(self, symbol, start, end):
        self.asked.append((start, end))
        if self.fail:
            raise self.fail
        return [self.held[t] for t in sorted(self.held) if start <= t <= end]


def make(source, wait=0.0, now=None):
    events = []
    feed = Feed()
    clock = (lambda: now) if now is not None else (lambda: at(400).timestamp())
    backfill = Backfill(source, calendars={"AAPL": NYSE}, wait=wait, clock=clock, sleep=lambda s: None)
    router = BarRouter({"AAPL": feed}, on_event=lambda *e: events.append(e), bar_seconds=60, backfill=backfill,
                       clock=clock)
    return router, feed, events


def test_a_hole_is_the_open_minutes_between_two_bars_and_a_night_is_none():
    assert missing_span(NYSE, at(0), at(4)) == (at(1), at(3))
    assert missing_span(NYSE, at(0), at(1)) is None
    close = pd.Timestamp("2024-01-03 20:59", tz="UTC")           # the last minute bar of the day
    assert missing_span(NYSE, close, pd.Timestamp("2024-01-04 14:30", tz="UTC")) is None
    friday = pd.Timestamp("2024-01-05 20:59", tz="UTC")
    assert missing_span(NYSE, friday, pd.Timestamp("2024-01-08 14:30", tz="UTC")) is None
    # the last minutes of one day and the first of the next, but not the night between
    assert missing_span(NYSE, pd.Timestamp("2024-01-03 20:57", tz="UTC"),
                        pd.Timestamp("2024-01-04 14:32", tz="UTC")) == (pd.Timestamp("2024-01-03 20:58", tz="UTC"),
                                                                        pd.Timestamp("2024-01-04 14:31", tz="UTC"))


def test_a_hole_is_filled_before_the_bar_that_revealed_it_and_the_originals_are_duplicates():
    source = Source([bar(i, "archive") for i in range(10)])
    router, feed, events = make(source)
    assert router.route(wire(0)) == "routed"
    assert router.route(wire(4)) == "routed"
    assert [b.timestamp for b in feed.bars] == [at(i) for i in range(5)]
    assert [b.source for b in feed.bars] == ["test", "backfill", "backfill", "backfill", "test"]
    assert router.backfilled == 3
    assert events == [("AAPL", "backfill", events[0][2])]
    assert events[0][2].startswith("3 bar(s)") and "from the archive" in events[0][2]
    assert [router.route(wire(i)) for i in (1, 2, 3)] == ["duplicate"] * 3
    assert router.counts == {"routed": 2, "duplicate": 3}


def test_what_the_source_does_not_have_is_a_gap_and_its_late_original_says_so():
    source = Source([bar(1, "archive")])
    router, feed, events = make(source)
    router.route(wire(0))
    router.route(wire(4))
    assert [b.timestamp for b in feed.bars] == [at(0), at(1), at(4)]
    kinds = [e[1] for e in events]
    assert kinds == ["backfill", "gap"]
    assert events[1][2].startswith("2 bar(s)") and str(at(2)) in events[1][2]
    assert router.route(wire(3)) == "late"
    assert "in the recorded gap" in events[-1][2]


def test_a_source_that_fails_leaves_a_gap_with_the_reason_not_a_crash():
    router, feed, events = make(Source(fail=OSError("archive unreachable")))
    router.route(wire(0))
    assert router.route(wire(3)) == "routed"
    assert [b.timestamp for b in feed.bars] == [at(0), at(3)]
    assert events[-1][1] == "gap" and "archive unreachable" in events[-1][2]


def test_without_a_source_holes_are_still_recorded():
    router, feed, events = make(None)
    router.route(wire(0))
    router.route(wire(2))
    assert [e[1] for e in events] == ["gap"] and "FARM_BACKFILL=off" in events[0][2]


def test_a_source_behind_is_asked_again_until_it_has_caught_up():
    source = Source([bar(1, "archive")])
    calls = {"n": 0}
    real = source.bars

    def slow(symbol, start, end):
        calls["n"] += 1
        if calls["n"] == 2:       # the archive writes the rest while the run waits
            source.held.update({at(i): bar(i, "archive") for i in (2, 3, 4)})
        return real(symbol, start, end)

    source.bars = slow
    ticks = iter(range(100))
    backfill = Backfill(source, calendars={"AAPL": NYSE}, wait=5.0, clock=lambda: float(next(ticks)),
                        sleep=lambda s: None)
    fill = backfill.fill("AAPL", at(1), at(3), until=at(4))
    assert [b.timestamp for b in fill.bars] == [at(1), at(2), at(3)] and fill.missing == []
    assert calls["n"] == 2


def test_a_silent_symbol_has_its_tail_fetched_once_and_then_asked_less_often():
    source = Source([bar(i, "archive") for i in range(6)])
    router, feed, events = make(source, wait=1.0)
    router.route(wire(0))
    router.route(wire(1))
    assert router.fill_tail("AAPL") == 4
    assert [b.timestamp for b in feed.bars] == [at(i) for i in range(6)]
    assert events[-1][1] == "backfill" and "after bar" in events[-1][2]
    assert router.fill_tail("AAPL") == 0             # nothing new: nothing routed twice
    assert router.route(wire(5)) == "duplicate"
    backfill = router.backfill
    backfill.asked("AAPL", 100.0, 0)
    assert not backfill.due("AAPL", 50.0, 0.0, 101.5)       # backed off to 2 x wait
    assert backfill.due("AAPL", 50.0, 0.0, 102.0)


def test_the_backfill_setting_follows_the_warm_up_source_and_says_what_it_takes():
    assert Settings.from_env({}).backfill == "off"
    assert Settings.from_env({"FARM_WARMUP": "archive"}).backfill == "archive"
    assert Settings.from_env({"FARM_WARMUP": "archive", "FARM_BACKFILL": "off"}).backfill == "off"
    with pytest.raises(ConfigError, match="FARM_BACKFILL must be archive, alpaca or off"):
        Settings.from_env({"FARM_BACKFILL": "bigquery"})
    assert open_source("off") is None


def test_the_archive_source_reads_the_span_from_the_embedded_market_archive(tmp_path):
    from farmkit.data.archive import LocalArchive, bars_table

    archive = LocalArchive(tmp_path)
    archive.write_bars(bars_table([bar(i, "alpaca") for i in range(0, 10) if i != 6]))
    source = open_source("archive", home=tmp_path)
    got = source.bars("AAPL", at(3), at(7))
    assert [b.timestamp for b in got] == [at(3), at(4), at(5), at(7)]
    assert all(b.source == "backfill" and b.symbol == "AAPL" for b in got)
    assert got[0].close == bar(3).close
    assert source.bars("MSFT", at(3), at(7)) == []
