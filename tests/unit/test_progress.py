"""Backtest progress: shown once a backtest has run a while, with bars done, rate and ETA; records for `farm backtest`."""

import dataclasses
import io
import re
import threading
import time

import pytest
from tqdm.std import tqdm as std_tqdm

import farmkit as fk
from farmkit.research import backtest
from farmkit.research.progress import BacktestProgress, ProgressRecord, describe, watch

# tqdm's text bar: "Slow:  50%|#####     | 150/300 [00:00<00:01, 97.0bar/s]" (done/total [elapsed<ETA, rate])
TEXT_BAR = re.compile(r"(?P<done>[\d.]+k?)/(?P<total>[\d.]+k?) \[\d\d:\d\d<\d\d:\d\d, +[\d.]+k?bar/s\]")


def eventually(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Clock:
    """A test clock: the progress's idea of how long the backtest has run."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Counter:
    def __init__(self):
        self.bars, self.looks = 0, 0

    def __call__(self):
        self.looks += 1
        return self.bars


def test_auto_shows_nothing_for_two_seconds_then_bars_done_rate_and_eta():
    clock, count, out = Clock(), Counter(), io.StringIO()
    with BacktestProgress(count, 1000, "auto", "Slow", file=out, every=0.01, clock=clock) as progress:
        clock.now, count.bars = 1.9, 100
        eventually(lambda: count.looks >= 5)
        assert out.getvalue() == "" and not progress.shown
        clock.now = 2.1
        eventually(lambda: progress.shown)
        count.bars = 400   # a rate needs bars done since the bar appeared
        eventually(lambda: any(m["done"] == "400" for m in TEXT_BAR.finditer(out.getvalue())))
    assert {m["total"] for m in TEXT_BAR.finditer(out.getvalue())} == {"1.00k"}


def test_on_shows_at_once_and_off_never():
    out = io.StringIO()
    with BacktestProgress(lambda: 0, 10, "on", "Now", file=out, every=60):
        assert "0/10" in out.getvalue()
    quiet = io.StringIO()
    with BacktestProgress(lambda: 0, 10, "off", "Never", file=quiet, after=0) as progress:
        assert progress._thread is None   # off: not even a polling thread
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError, match="auto, on or off"):
        BacktestProgress(lambda: 0, 10, "sometimes", "x")


class Slow(fk.Strategy):
    """Waits at bar 50 until a progress bar is up and at bar 150 until it shows the bars before."""

    def next(self):
        if len(self) in (50, 150):   # the recorder counts a bar once next() has returned
            eventually(lambda: any(b.desc.startswith("Slow") and b.n >= len(self) - 1
                                   for b in list(std_tqdm._instances)))


class Quick(fk.Strategy):
    pass


@pytest.fixture
def bars():
    return fk.data.synthetic(["AAPL"], start="2024-01-02", days=1, freq="1min", seed=3)["AAPL"].iloc[:300]


def test_a_backtest_past_the_threshold_shows_bars_done_rate_and_eta(farm_home, bars, capsys):
    plan = dataclasses.replace(backtest.plan(Slow, bars, progress="auto"), progress_after=0.0)
    backtest.run(plan)
    shown = {(m["done"], m["total"]) for m in TEXT_BAR.finditer(capsys.readouterr().err)}
    assert any(total == "300" and float(done) >= 149 for done, total in shown), shown


def test_a_backtest_under_the_threshold_shows_nothing(farm_home, bars, capsys):
    plan = dataclasses.replace(backtest.plan(Quick, bars, progress="auto"), progress_after=30.0)
    backtest.run(plan)
    assert capsys.readouterr().err == ""
    assert not any(b.desc.startswith("Quick") for b in list(std_tqdm._instances))


def test_records_go_to_a_file_instead_of_a_bar(tmp_path):
    clock, count, out, path = Clock(), Counter(), io.StringIO(), tmp_path / "progress.json"
    with BacktestProgress(count, 1000, "auto", "Rec", record_to=path, file=out, every=0.01, clock=clock):
        clock.now, count.bars = 1.0, 10
        eventually(lambda: count.looks >= 3)
        assert not path.exists()
        clock.now, count.bars = 3.0, 100
        eventually(lambda: path.exists())
        clock.now, count.bars = 4.0, 600
        eventually(lambda: ProgressRecord.from_json(path.read_text()).bars == 600)
        record = ProgressRecord.from_json(path.read_text())
        assert (record.label, record.total, record.done) == ("Rec", 1000, False)
        assert record.rate == pytest.approx(500.0) and record.eta == pytest.approx(0.8)
        count.bars = 1000
    final = ProgressRecord.from_json(path.read_text())
    assert final.done and final.bars == 1000
    assert out.getvalue() == ""   # no bar drawn
    assert not path.with_name("progress.json.part").exists()


def test_a_short_backtest_writes_no_record(tmp_path):
    path = tmp_path / "progress.json"
    with BacktestProgress(lambda: 5, 10, "auto", "Short", record_to=path, every=0.01):
        pass
    assert not path.exists()


def test_describe():
    assert describe(ProgressRecord("SmaCross", 144_000, 390_000, 41_000.0, 3.0, 0.0)) == \
        "backtest SmaCross: 144,000/390,000 bars, 41,000 bars/s, ETA 6 s"
    assert describe(ProgressRecord("S", 0, 390_000, 100.0, 3.0, 0.0)).endswith("ETA 1 h 5 min")
    assert describe(ProgressRecord("S", 5, 10, 0.0, 0.0, 0.0)) == "backtest S: 5/10 bars, ? bars/s, ETA ?"
    assert describe(ProgressRecord("S", 390_000, 390_000, 41_000.0, 9.5, 0.0, done=True)) == \
        "backtest S: 390,000 bars in 9.5 s, 41,000 bars/s"


def test_watch_shows_each_record_and_the_summary_then_removes_the_file(tmp_path):
    path, out = tmp_path / "progress.json", io.StringIO()
    with watch(path, every=0.01, file=out):
        path.write_text(ProgressRecord("A", 50, 200, 25.0, 2.0, 1.0).to_json())
        eventually(lambda: "backtest A: 50/200 bars, 25 bars/s, ETA 6 s" in out.getvalue())
        path.write_text("{not json")   # half written: skipped
        path.write_text(ProgressRecord("A", 200, 200, 25.0, 8.0, 1.0, done=True).to_json())
        eventually(lambda: "backtest A: 200 bars in 8.0 s, 25 bars/s\n" in out.getvalue())
        path.write_text(ProgressRecord("B", 7, 70, 7.0, 2.0, 2.0).to_json())   # the notebook's next backtest
        eventually(lambda: "backtest B: 7/70 bars" in out.getvalue())
    assert not path.exists()
    assert not any(t.name == "farm-progress-watch" for t in threading.enumerate())
