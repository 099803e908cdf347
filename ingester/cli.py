"""``farm ingest`` / ``python -m ingester`` and ``farm archive``: small main()s over the services."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from farmkit.errors import FarmError

_INGEST_EPILOG = """examples:
  farm ingest --source synthetic --stocks AAPL,MSFT --speed 60     # demo: no account, no keys
  farm ingest --source replay:data/universe.parquet --speed 0      # a file of bars, as fast as possible
  FARM_BUS=pubsub://my-project farm ingest --stocks AAPL,MSFT --crypto BTC/USD --news on
  FARM_INGEST_STOCKS='*' FARM_INGEST_FEED=sip python -m ingester   # the whole market (paid plan)

environment (command-line options override them):
  APCA_API_KEY_ID, APCA_API_SECRET_KEY   Alpaca keys (a free paper account's work with --feed iex)
  FARM_BUS                 memory:// (default, this process only) or pubsub://PROJECT
                           (PUBSUB_EMULATOR_HOST=127.0.0.1:8085 for the emulator)
  FARM_HEALTH_PORT         /healthz, /readyz, /metrics (default 8080)
{variables}
  HOSTNAME                 a StatefulSet pod name (ingester-2) gives the shard index

Wire format: one JSON message per bar on FARM_INGEST_MARKET_TOPIC, ordering key = symbol, attributes type and
symbol. Updated bars (a late trade) carry "revision": 1, 2, ... with the same timestamp: consumers that
already used the bar keep it (farmkit's router notes a revision event), the archive keeps every revision.
Bars filled in after a gap say "source": "backfill". Exit codes: 0 clean stop (everything published),
1 messages left unpublished (spilled to FARM_HOME/ingester/), 2 bad settings, 3 fatal feed error (e.g. 409)."""

_ARCHIVE_EPILOG = """examples:
  farm archive                                   # memory:// only sees this process: use with pubsub://
  FARM_BUS=pubsub://my-project farm archive      # FARM_STORE=local://.farm writes Parquet under .farm/archive
  FARM_BUS=pubsub://my-project FARM_STORE=bigquery://my-project/farm farm archive   # BigQuery market_data, news
  duckdb -c "select * from read_parquet('.farm/archive/market_data/*/*.parquet', hive_partitioning=1)"

Subscribes to market-data and news-data (subscriptions archive-market-data, archive-news-data), writes
bars and news in batches and acks only what is written; rows are deduplicated on (symbol, timestamp,
revision) and (id, updated_at), so redeliveries and restarts write nothing twice."""


def _variables() -> str:
    from ingester.settings import VARIABLES

    return "\n".join(f"  {var:<34} {text} (default {default or 'unset'})"
                     for var, (_, default, text) in VARIABLES.items())


def _add_ingest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="alpaca (default) | synthetic | replay:FILE")
    parser.add_argument("--stocks", help="stock symbols, comma-separated, or '*'")
    parser.add_argument("--crypto", help="crypto pairs, comma-separated (BTC/USD)")
    parser.add_argument("--feed", choices=("iex", "sip"), help="stock feed")
    parser.add_argument("--news", help="on | off | SYMBOLS")
    parser.add_argument("--speed", type=float, help="synthetic/replay: minutes of bars per wall minute (0: unpaced)")
    parser.add_argument("--days", type=int, help="synthetic: trading days of bars")
    parser.add_argument("--health-port", type=int, help="port of /healthz, /readyz, /metrics (0: any free one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(handler=ingest)


def register(subparsers) -> None:
    """Add ``ingest`` and ``archive`` to an argparse subparsers object (``farm ingest``, ``farm archive``)."""
    formatter = argparse.RawDescriptionHelpFormatter
    ingest_parser = subparsers.add_parser(
        "ingest", help="stream Alpaca market data and news (or a demo source) onto the bus",
        description="Alpaca stocks and crypto streams (minute bars, updated bars; optional daily bars and trades) "
                    "and news polling -> the bus, with a staleness watchdog, REST backfill after gaps, sharding "
                    "over replicas and health endpoints. Runs until SIGTERM/Ctrl-C, then flushes.",
        epilog=_INGEST_EPILOG.format(variables=_variables()), formatter_class=formatter)
    _add_ingest(ingest_parser)
    archive_parser = subparsers.add_parser(
        "archive", help="write bars and news from the bus to the store, idempotently",
        description="Subscribe to the market-data and news-data topics and write what arrives to FARM_STORE "
                    "(local: Parquet under FARM_HOME/archive, read with DuckDB; bigquery://PROJECT/DATASET: the "
                    "tables market_data and news, one row per key when read).",
        epilog=_ARCHIVE_EPILOG, formatter_class=formatter)
    archive_parser.add_argument("--flush-seconds", type=float, default=5.0, help="write at least this often")
    archive_parser.add_argument("--batch", type=int, default=5000, help="write when this many records wait")
    archive_parser.add_argument("--health-port", type=int, help="port of /healthz, /readyz, /metrics")
    archive_parser.add_argument("-v", "--verbose", action="store_true")
    archive_parser.set_defaults(handler=archive)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def ingest(args: argparse.Namespace, environ=None) -> int:
    from ingester.service import Ingester
    from ingester.settings import IngestSettings

    environ = dict(os.environ if environ is None else environ)
    for option in ("source", "stocks", "crypto", "feed", "news", "speed", "days"):
        value = getattr(args, option, None)
        if value is not None:
            environ[f"FARM_INGEST_{option.upper()}"] = str(value)
    if getattr(args, "health_port", None) is not None:
        environ["FARM_HEALTH_PORT"] = str(args.health_port)
    _logging(getattr(args, "verbose", False))
    settings = IngestSettings.from_env(environ)
    stop = _stop_on_signals()
    return Ingester(settings).run(stop)


def archive(args: argparse.Namespace, environ=None) -> int:
    from farmkit.data.archive import Archiver
    from farmkit.settings import Settings

    environ = dict(os.environ if environ is None else environ)
    if getattr(args, "health_port", None) is not None:
        environ["FARM_HEALTH_PORT"] = str(args.health_port)
    _logging(getattr(args, "verbose", False))
    settings = Settings.from_env({k: v for k, v in environ.items() if not k.startswith("FARM_INGEST_")})
    stop = _stop_on_signals()
    return Archiver.from_settings(settings, flush_seconds=args.flush_seconds, batch=args.batch).run(stop)


def main(argv: list[str] | None = None) -> int:
    """``python -m ingester [ingest options]`` or ``python -m ingester archive [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m ingester", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="The Farm's market-data services.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    if not argv or argv[0] not in ("ingest", "archive", "-h", "--help"):
        argv = ["ingest", *argv]
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except FarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
