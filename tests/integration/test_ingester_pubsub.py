"""Real alpaca-py -> local Alpaca server -> ingester -> Pub/Sub emulator -> ordered consumer and the archive."""

from __future__ import annotations

import threading
import time

import pytest

from farmkit.data.archive import Archiver, LocalArchive, read_bars
from farmkit.bus import open_bus
from ingester.service import Ingester
from tests.alpaca_stream import AlpacaStreamServer
from tests.integration.test_ingester_alpaca import (SYMBOLS, Consumer, Running, eventually, expected, frames, minute,
                                                     rest, settings)
from tests.pubsub_emulator import pubsub_emulator

__all__ = ["frames", "pubsub_emulator", "rest"]   # fixtures used here


@pytest.fixture
def emulator_env(pubsub_emulator, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    return f"pubsub://farm-ingest-{time.monotonic_ns()}"


def test_drops_and_a_stall_through_the_emulator_reach_consumer_and_archive(frames, rest, tmp_path, emulator_env):
    bus = open_bus(emulator_env)
    consumer = Consumer(bus)
    archiver = Archiver(open_bus(emulator_env), LocalArchive(tmp_path / "store"), flush_seconds=0.2)
    archiver.start()
    with AlpacaStreamServer(drop_every=9) as stream:
        base = settings(stream, rest, tmp_path)
        ingester = Ingester(base.replace(farm=base.farm.replace(bus=emulator_env)), health_port=0,
                            reconnect_min_seconds=0.05)
        with Running(ingester):
            stream.wait_subscribed(SYMBOLS, timeout=10)
            for i in range(10):
                stream.send_bars(minute(frames, i))
                time.sleep(0.02)
            stream.stall()
            stream.send_bars(minute(frames, 10))
            eventually(lambda: ingester.metrics.value("farm_ingest_watchdog_reconnects_total") >= 1, what="watchdog")
            stream.resume()
            stream.wait_subscribed(SYMBOLS, timeout=10)
            for i in range(11, len(frames["AAPL"])):
                stream.send_bars(minute(frames, i))
            eventually(lambda: consumer.deduped() == expected(frames), timeout=30, what="every bar at the consumer")
        assert ingester.publisher.sent >= 2 * len(frames["AAPL"])

    def archived():
        archiver.flush()
        table = read_bars(tmp_path / "store")
        return len(table) == 2 * len(frames["AAPL"])
    eventually(archived, timeout=30, what="every bar in the archive")
    table = read_bars(tmp_path / "store")
    for symbol in SYMBOLS:
        assert list(table[table.symbol == symbol].timestamp) == expected(frames)[symbol]
    stop = threading.Event()
    stop.set()
    archiver.run(stop)      # stops at once: final flush, subscriptions closed
    bus.close()
