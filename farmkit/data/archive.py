"""The market-data archive: bars and news from the bus, written to the store idempotently.

    archive = open_archive("local://.farm")        # Parquet under .farm/archive/{market_data,news}/date=.../
    archive.write_bars(table)                      # pyarrow.Table with BAR_SCHEMA; rows already there are skipped
    read_bars(".farm")                             # a DataFrame through DuckDB, one row per (symbol, timestamp, revision)

The writer is chosen by the store URL through ``REGISTRY``; a cloud store (BigQuery tables ``market_data``
and ``news``) plugs in as another entry with the same two methods, ``write_bars(table)`` and
``write_news(table)`` (see :class:`ArchiveWriter`). Keys: bars (symbol, timestamp, revision), news
(id, updated_at). The :class:`Archiver` acks a message only after its batch is written, so a crash
redelivers, and the keys make the rewrite a no-op.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from farmkit.errors import ConfigError
from farmkit.model import Bar, MalformedMessage, NewsItem, parse_message
from farmkit.settings import Settings, backend

__all__ = ["BAR_SCHEMA", "NEWS_SCHEMA", "REGISTRY", "ArchiveWriter", "Archiver", "BigQueryArchive", "LocalArchive",
           "bars_table",
           "news_table", "open_archive", "read_bars", "read_news"]

log = logging.getLogger("farmkit.data.archive")
_TS = pa.timestamp("us", tz="UTC")
BAR_SCHEMA = pa.schema([("symbol", pa.string()), ("timestamp", _TS), ("open", pa.float64()), ("high", pa.float64()),
                        ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.float64()),
                        ("source", pa.string()), ("revision", pa.int64()), ("archived_at", _TS)])
NEWS_SCHEMA = pa.schema([("id", pa.string()), ("headline", pa.string()), ("summary", pa.string()),
                         ("symbols", pa.list_(pa.string())), ("created_at", _TS), ("updated_at", _TS),
                         ("url", pa.string()), ("source", pa.string()), ("archived_at", _TS)])
BAR_KEY, NEWS_KEY = ("symbol", "timestamp", "revision"), ("id", "updated_at")


class ArchiveWriter(Protocol):
    """Where archived rows go. Both methods must be idempotent on the keys (a row written twice is
    stored once) and raise if nothing durable happened."""

    def write_bars(self, table: pa.Table) -> int:
        """Write rows of BAR_SCHEMA; returns how many were new."""

    def write_news(self, table: pa.Table) -> int:
        """Write rows of NEWS_SCHEMA; returns how many were new."""


def bars_table(bars: list[Bar]) -> pa.Table:
    now = pa.scalar(time.time_ns() // 1000, _TS)
    return pa.table({"symbol": [b.symbol for b in bars],
                     "timestamp": pa.array([b.timestamp.value // 1000 for b in bars], _TS),
                     "open": [b.open for b in bars], "high": [b.high for b in bars], "low": [b.low for b in bars],
                     "close": [b.close for b in bars], "volume": [b.volume for b in bars],
                     "source": [b.source for b in bars], "revision": pa.array([b.revision for b in bars], pa.int64()),
                     "archived_at": pa.array([now.value] * len(bars), _TS)}, schema=BAR_SCHEMA)


def news_table(items: list[NewsItem]) -> pa.Table:
    now = pa.scalar(time.time_ns() // 1000, _TS)
    return pa.table({"id": [str(n.id) for n in items], "headline": [n.headline for n in items],
                     "summary": [n.summary for n in items], "symbols": [list(n.symbols) for n in items],
                     "created_at": pa.array([n.created_at.value // 1000 for n in items], _TS),
                     "updated_at": pa.array([n.updated_at.value // 1000 for n in items], _TS),
                     "url": [n.url for n in items], "source": [n.source for n in items],
                     "archived_at": pa.array([now.value] * len(items), _TS)}, schema=NEWS_SCHEMA)


def _keys(table: pa.Table, columns: tuple[str, ...]) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in columns)))


class LocalArchive:
    """Parquet under ``home/archive``: ``market_data/date=YYYY-MM-DD/`` by bar timestamp and
    ``news/date=YYYY-MM-DD/`` by ``updated_at``; each write is a new file (temporary name, then renamed).
    Rows whose key is already in the partition are skipped, so rewriting a batch adds nothing."""

    def __init__(self, home: str | os.PathLike):
        self.root = Path(home) / "archive"
        self._lock = threading.Lock()

    def write_bars(self, table: pa.Table) -> int:
        return self._write("market_data", table.cast(BAR_SCHEMA), BAR_KEY, "timestamp")

    def write_news(self, table: pa.Table) -> int:
        return self._write("news", table.cast(NEWS_SCHEMA), NEWS_KEY, "updated_at")

    def _write(self, name: str, table: pa.Table, key: tuple[str, ...], date_column: str) -> int:
        if table.num_rows == 0:
            return 0
        dates = [t.date().isoformat() for t in table.column(date_column).to_pylist()]
        written = 0
        with self._lock:
            for date in sorted(set(dates)):
                part = table.filter(pa.array([d == date for d in dates]))
                folder = self.root / name / f"date={date}"
                existing = self._existing(folder, key)
                keep, seen = [], set(existing)
                for i, row_key in enumerate(_keys(part, key)):
                    if row_key not in seen:
                        seen.add(row_key)
                        keep.append(i)
                if not keep:
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                final = folder / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                temporary = final.with_suffix(".tmp")
                pq.write_table(part.take(pa.array(keep)), temporary)
                os.replace(temporary, final)
                written += len(keep)
        return written

    def latest_bars(self, symbols, n: int, *, before=None) -> "Bars":
        """The last ``n`` archived minute bars of each symbol (before ``before``, default all), the latest
        revision of each: what primes a paper run's indicators from the archive."""
        import duckdb
        import pandas as pd

        from farmkit.data.bars import Bars

        root = self.root / "market_data"
        out = Bars()
        if not any(root.glob("date=*/*.parquet")) or n <= 0:
            return out
        cutoff = "" if before is None else f"AND timestamp < TIMESTAMPTZ '{pd.Timestamp(before).isoformat()}'"
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for symbol in symbols:
                frame = con.execute(f"""
                    SELECT timestamp, open, high, low, close, volume FROM (
                        SELECT *, row_number() OVER (PARTITION BY timestamp ORDER BY revision DESC, archived_at) AS rn
                        FROM read_parquet('{root}/date=*/*.parquet', hive_partitioning = true)
                        WHERE symbol = ? {cutoff})
                    WHERE rn = 1 ORDER BY timestamp DESC LIMIT ?""", [symbol, int(n)]).df()
                if len(frame):
                    out[symbol] = _bars_frame(frame)
        finally:
            con.close()
        return out

    @staticmethod
    def _existing(folder: Path, key: tuple[str, ...]) -> set[tuple]:
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            return set()
        return set(_keys(pq.read_table(files, columns=list(key)) if len(files) > 1
                         else pq.read_table(files[0], columns=list(key)), key))


def _bars_frame(frame):
    """Newest-first rows of timestamp and OHLCV -> an oldest-first frame of floats on a UTC index."""
    import pandas as pd

    frame = frame.iloc[::-1].set_index("timestamp")
    frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC")
    frame.index.name = "timestamp"
    return frame.astype("float64")


class BigQueryArchive:
    """The archive in BigQuery's ``market_data`` and ``news`` tables (a :class:`~farmkit.fmel.bigquery.BigQueryStore`).
    Each row's insertId is its key, and readers keep one row per key: a redelivered batch written
    again is harmless. A failed write raises (nothing is spilled): the archiver then nacks, and Pub/Sub,
    which still holds the messages, delivers them again."""

    def __init__(self, store):
        self.store = store

    def write_bars(self, table: pa.Table) -> int:
        return self.store.write_rows(_json_rows(table.cast(BAR_SCHEMA)), table="market_data", spill=False)

    def write_news(self, table: pa.Table) -> int:
        return self.store.write_rows(_json_rows(table.cast(NEWS_SCHEMA)), table="news", spill=False)

    def latest_bars(self, symbols, n: int, *, before=None) -> "Bars":
        """As :meth:`LocalArchive.latest_bars`, from BigQuery."""
        import pandas as pd

        from farmkit.data.bars import Bars

        out = Bars()
        if n <= 0:
            return out
        table = f"`{self.store.table('market_data')}`"
        for symbol in symbols:
            params = [symbol] + ([pd.Timestamp(before).to_pydatetime()] if before is not None else [])
            frame = self.store.query(f"""
                SELECT timestamp, open, high, low, close, volume FROM {table}
                WHERE symbol = ? {"AND timestamp < ?" if before is not None else ""}
                QUALIFY ROW_NUMBER() OVER (PARTITION BY timestamp ORDER BY revision DESC, archived_at) = 1
                ORDER BY timestamp DESC LIMIT {int(n)}""", params)
            if len(frame):
                out[symbol] = _bars_frame(frame)
        return out


def _json_rows(table: pa.Table) -> list[dict]:
    # insertAll JSON: timestamps as ISO text, lists as lists.
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if hasattr(value, "isoformat"):
                row[key] = value.isoformat()
    return rows


def _local(url: str) -> ArchiveWriter:
    parsed = urlparse(url)
    return LocalArchive(Path(parsed.netloc + parsed.path).expanduser())


def _bigquery(url: str) -> ArchiveWriter:
    from farmkit.fmel.stores import open_store

    return BigQueryArchive(open_store(url))


REGISTRY: dict[str, Callable[[str], ArchiveWriter]] = {"local": _local, "bigquery": _bigquery}


def open_archive(url: str) -> ArchiveWriter:
    """The archive writer for a store URL: ``local://PATH`` (Parquet under PATH/archive)."""
    return backend(REGISTRY, url, "archive store")(url)


def _read(home: str | os.PathLike, name: str, key: tuple[str, ...]):
    import duckdb

    root = Path(home) / "archive" / name
    if not any(root.glob("date=*/*.parquet")):
        return None
    keys = ", ".join(key)
    con = duckdb.connect()
    try:
        # Two archivers racing on one batch can both write a row: the read keeps the first of each key.
        return con.execute(f"""SELECT * EXCLUDE (date, rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY archived_at) AS rn
            FROM read_parquet('{root}/date=*/*.parquet', hive_partitioning = true)) WHERE rn = 1
            ORDER BY {keys}""").df()
    finally:
        con.close()


def read_bars(home: str | os.PathLike):
    """Every archived bar (a DataFrame, one row per symbol, timestamp and revision), through DuckDB."""
    import pandas as pd

    frame = _read(home, "market_data", BAR_KEY)
    return frame if frame is not None else pd.DataFrame(columns=BAR_SCHEMA.names)


def read_news(home: str | os.PathLike):
    """Every archived news version (one row per id and updated_at), through DuckDB."""
    import pandas as pd

    frame = _read(home, "news", NEWS_KEY)
    return frame if frame is not None else pd.DataFrame(columns=NEWS_SCHEMA.names)


class Archiver:
    """Subscribes to the market-data and news topics and writes batches to ``writer``; acks after a write,
    nacks (redelivery) when the write fails. Malformed messages are acked, counted and logged."""

    def __init__(self, bus, writer: ArchiveWriter, *, market_topic: str = "market-data", news_topic: str = "news-data",
                 subscription_prefix: str = "archive", flush_seconds: float = 5.0, batch: int = 5000,
                 health_port: int | None = None):
        from farmkit.health import Metrics

        self.bus, self.writer = bus, writer
        self.flush_seconds, self.batch, self.health_port = flush_seconds, batch, health_port
        self.subscriptions = {f"{subscription_prefix}-{market_topic}": market_topic,
                              f"{subscription_prefix}-{news_topic}": news_topic}
        self.metrics = Metrics({"service": "archive"})
        self._pending: list[tuple[object, Bar | NewsItem]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._handles: list = []
        self.last_write_error: str | None = None
        self.written = {"bars": 0, "news": 0}

    @classmethod
    def from_settings(cls, settings: Settings, **options) -> "Archiver":
        from farmkit.bus import open_bus

        return cls(open_bus(settings.bus), open_archive(settings.store), health_port=settings.health_port, **options)

    def start(self) -> "Archiver":
        for subscription, topic in self.subscriptions.items():
            self.bus.ensure_subscription(subscription, topic, ack_deadline=60)
            self._handles.append(self.bus.subscribe(subscription, self._on_message, max_messages=self.batch * 2))
        return self

    def _on_message(self, message) -> None:
        try:
            record = parse_message(message.data, dict(message.attributes))
        except MalformedMessage as exc:
            self.metrics.inc("farm_archive_malformed_total")
            log.warning("archive: skipped a malformed message (%s)", exc.reason)
            message.ack()
            return
        with self._lock:
            self._pending.append((message, record))
            if len(self._pending) >= self.batch:
                self._wake.set()

    def flush(self) -> int:
        """Write what is pending; returns the number of new rows. Acks on success, nacks on failure."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return 0
        bars = [r for _, r in pending if isinstance(r, Bar)]
        news = [r for _, r in pending if isinstance(r, NewsItem)]
        try:
            new_bars = self.writer.write_bars(bars_table(bars)) if bars else 0
            new_news = self.writer.write_news(news_table(news)) if news else 0
        except Exception as exc:  # noqa: BLE001 - redelivered and retried at the next flush
            self.last_write_error = f"{type(exc).__name__}: {exc}"
            self.metrics.inc("farm_archive_write_errors_total")
            log.error("archive: writing %d bar(s) and %d news item(s) failed (%s); they will be delivered again",
                      len(bars), len(news), self.last_write_error)
            for message, _ in pending:
                message.nack()
            return 0
        self.last_write_error = None
        for message, _ in pending:
            message.ack()
        self.written["bars"] += new_bars
        self.written["news"] += new_news
        self.metrics.inc("farm_archive_rows_written_total", new_bars, table="market_data")
        self.metrics.inc("farm_archive_rows_written_total", new_news, table="news")
        self.metrics.inc("farm_archive_duplicates_total", len(bars) + len(news) - new_bars - new_news)
        return new_bars + new_news

    def ready(self) -> tuple[bool, str]:
        if self.last_write_error:
            return False, f"writes failing: {self.last_write_error}"
        if not all(h.running for h in self._handles):
            return False, "a subscription stopped"
        return True, f"archived {self.written['bars']} bar(s), {self.written['news']} news item(s)"

    def run(self, stop: threading.Event) -> int:
        from farmkit.health import HealthServer

        health = HealthServer(self.ready, self.metrics.render, port=self.health_port or 0).start() \
            if self.health_port is not None else None
        self.start()
        log.info("archive: %s -> %s", ", ".join(self.subscriptions.values()), type(self.writer).__name__)
        try:
            while not stop.is_set():
                self._wake.wait(self.flush_seconds)
                self._wake.clear()
                self.flush()
        finally:
            for handle in self._handles:
                handle.cancel()
            self.flush()
            for handle in self._handles:
                handle.close(10)
            self.bus.close()
            if health is not None:
                health.close()
        return 0 if self.last_write_error is None else 1
