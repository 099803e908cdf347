"""farm archive into BigQuery's market_data and news tables, against the BigQuery emulator with the
real google-cloud-bigquery client: written with the key as insertId, read back one row per key, and
a paper run can warm up from it."""

import pandas as pd
import pytest

from farmkit.data.archive import Archiver, BigQueryArchive, bars_table, news_table, open_archive
from farmkit.bus import open_bus, publish_record
from farmkit.model import Bar, NewsItem
from farmkit.live.warmup import warmup_history
from tests.bigquery_emulator import bigquery_emulator  # noqa: F401 - the session fixture

T = pd.Timestamp("2024-01-02 14:30", tz="UTC")


def bars(n, revision=0, symbols=("AAPL", "MSFT")):
    return [Bar(s, T + pd.Timedelta(minutes=i), 10 + i, 11 + i, 9 + i, 10 + i, 100, source="alpaca_stock",
                revision=revision) for s in symbols for i in range(n)]


@pytest.fixture
def url(bigquery_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_HOME", str(tmp_path))
    return bigquery_emulator.url()


def test_bars_and_news_are_archived_once_per_key(url):
    archive = open_archive(url)
    assert isinstance(archive, BigQueryArchive)
    archive.write_bars(bars_table(bars(30)))
    archive.write_bars(bars_table(bars(10)))                      # a redelivered batch, written again
    corrected = Bar("AAPL", T + pd.Timedelta(minutes=29), 39, 45, 38, 44.5, 150, source="alpaca_stock", revision=1)
    archive.write_bars(bars_table([corrected]))
    news = NewsItem(7, "AAPL beats", "", ("AAPL",), T, T, "https://x", "alpaca_news")
    archive.write_news(news_table([news, news]))

    latest = archive.latest_bars(["AAPL", "MSFT"], 5)
    assert list(latest["AAPL"].index) == [T + pd.Timedelta(minutes=i) for i in range(25, 30)]
    assert latest["AAPL"]["close"].iloc[-1] == 44.5 and latest["MSFT"]["close"].iloc[-1] == 39
    early = archive.latest_bars(["AAPL"], 3, before=T + pd.Timedelta(minutes=10))
    assert list(early["AAPL"].index) == [T + pd.Timedelta(minutes=i) for i in range(7, 10)]
    table = f"`{archive.store.table('news')}`"
    assert int(archive.store.query(f"SELECT count(DISTINCT CONCAT(id, '|', CAST(updated_at AS STRING))) AS n "
                                   f"FROM {table}").n[0]) == 1
    history = warmup_history("archive", ["AAPL", "MSFT"], 20, store=url)
    assert len(history["AAPL"]) == 20 and history["AAPL"].index[-1] == T + pd.Timedelta(minutes=29)


def test_the_archiver_writes_to_bigquery(url):
    bus = open_bus("memory://")
    archive = open_archive(url)
    archiver = Archiver(bus.peer(), archive, flush_seconds=0.1).start()
    for bar in bars(4):
        publish_record(bus, "market-data", bar)
    bus.flush()
    deadline = pd.Timestamp.now() + pd.Timedelta(seconds=20)
    while archiver.written["bars"] < 8 and pd.Timestamp.now() < deadline:
        archiver.flush()
    assert archiver.written["bars"] == 8
    assert len(archive.latest_bars(["AAPL", "MSFT"], 100)["MSFT"]) == 4
    bus.close()


def test_a_failed_archive_write_raises_and_spills_nothing(url, monkeypatch):
    from google.api_core.exceptions import ServiceUnavailable

    from farmkit.fmel.bigquery import FmelSinkError

    archive = open_archive(url)
    archive.store.attempts, archive.store.sleep = 2, lambda seconds: None

    def unavailable(*args, **kwargs):
        raise ServiceUnavailable("BigQuery is away")

    # An outage, simulated at the client: stopping the session's shared emulator would disturb other tests.
    monkeypatch.setattr(archive.store.client, "insert_rows_json", unavailable)
    with pytest.raises(FmelSinkError, match="market_data"):
        archive.write_bars(bars_table(bars(3)))      # the archiver nacks: Pub/Sub delivers again
    assert archive.store.pending()["batches"] == 0
