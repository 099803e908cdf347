"""farm archive on the memory bus: bars and news written once, whatever is redelivered or rewritten."""

from __future__ import annotations

import pandas as pd

from farmkit.data.archive import Archiver, LocalArchive, bars_table, open_archive, read_bars, read_news
from farmkit.bus import open_bus, publish_record
from farmkit.model import Bar, NewsItem

T = pd.Timestamp("2024-01-02 14:30", tz="UTC")


def bars(n, revision=0):
    return [Bar(s, T + pd.Timedelta(minutes=i), 10, 11, 9, 10, 100, source="alpaca_stock", revision=revision)
            for s in ("AAPL", "MSFT") for i in range(n)]


def test_rewrites_and_redeliveries_are_stored_once(tmp_path):
    archive = open_archive(f"local://{tmp_path}")
    assert isinstance(archive, LocalArchive)
    assert archive.write_bars(bars_table(bars(5))) == 10
    assert archive.write_bars(bars_table(bars(7))) == 4            # only the new minutes
    assert archive.write_bars(bars_table(bars(1, revision=1))) == 2  # a revision is a new row
    table = read_bars(tmp_path)
    assert len(table) == 16 and table.groupby(["symbol", "timestamp", "revision"]).size().max() == 1


def test_archiver_subscribes_and_writes_bars_and_news(tmp_path):
    bus = open_bus("memory://")
    archiver = Archiver(bus.peer(), LocalArchive(tmp_path), flush_seconds=0.1).start()
    news = NewsItem(7, "AAPL beats", "", ("AAPL",), T, T, "https://x", "alpaca_news")
    for bar in bars(3) + bars(3):                                    # every bar twice, as at-least-once may
        publish_record(bus, "market-data", bar)
    publish_record(bus, "news-data", news)
    publish_record(bus, "news-data", news)
    bus.publish("market-data", b"not json", type="bar", symbol="AAPL")
    bus.flush()
    deadline = pd.Timestamp.now() + pd.Timedelta(seconds=10)
    while archiver.written["bars"] < 6 and pd.Timestamp.now() < deadline:
        archiver.flush()
    archiver.flush()
    assert archiver.written == {"bars": 6, "news": 1}
    assert len(read_bars(tmp_path)) == 6
    assert read_news(tmp_path).id.tolist() == ["7"]
    assert archiver.metrics.value("farm_archive_malformed_total") == 1
    assert archiver.ready()[0]
    bus.close()


def test_a_failed_write_is_redelivered(tmp_path):
    class Broken(LocalArchive):
        fail = True

        def write_bars(self, table):
            if self.fail:
                self.fail = False
                raise OSError("disk full")
            return super().write_bars(table)

    bus = open_bus("memory://")
    archiver = Archiver(bus.peer(), Broken(tmp_path), flush_seconds=0.1).start()
    publish_record(bus, "market-data", bars(1)[0])
    bus.flush()
    deadline = pd.Timestamp.now() + pd.Timedelta(seconds=15)
    while archiver.written["bars"] < 1 and pd.Timestamp.now() < deadline:
        archiver.flush()
    assert archiver.written["bars"] == 1 and archiver.metrics.value("farm_archive_write_errors_total") == 1
    bus.close()


def test_a_paper_run_can_warm_up_from_the_archive(tmp_path):
    from farmkit.errors import ConfigError
    from farmkit.live.warmup import warmup_history

    archive = LocalArchive(tmp_path)
    archive.write_bars(bars_table(bars(50)))
    corrected = Bar("AAPL", T + pd.Timedelta(minutes=49), 10, 13, 9, 12.5, 150, source="alpaca_stock", revision=1)
    archive.write_bars(bars_table([corrected]))
    history = warmup_history("archive", ["AAPL", "MSFT"], 20, home=tmp_path)
    assert list(history["AAPL"].index) == [T + pd.Timedelta(minutes=i) for i in range(30, 50)]
    assert history["AAPL"]["close"].iloc[-1] == 12.5 and history["MSFT"]["close"].iloc[-1] == 10  # latest revision
    early = warmup_history("archive", ["AAPL"], 5, home=tmp_path, now=T + pd.Timedelta(minutes=10))
    assert early["AAPL"].index[-1] == T + pd.Timedelta(minutes=9)
    try:
        warmup_history("archive", ["TSLA"], 5, home=tmp_path)
    except ConfigError as exc:
        assert "no bars for TSLA" in str(exc) and "farm archive" in str(exc)
    else:
        raise AssertionError("a symbol without archived bars must be an error")
