"""The ingester without Alpaca: synthetic and replay sources on the memory bus, the CLI."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

import farmkit as fk
from farmkit.bus import open_bus
from farmkit.live.router import BarRouter
from ingester.cli import main, register
from ingester.service import Ingester
from ingester.settings import IngestSettings

ROOT = Path(__file__).resolve().parents[2]


class Feed:
    def __init__(self):
        self.bars = []

    def put(self, bar):
        self.bars.append(bar)

    def stop_feed(self):
        pass


def test_replay_file_reaches_a_router_in_order(tmp_path):
    bars = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=1, freq="1min", seed=1)
    long = [frame.assign(symbol=s) for s, frame in bars.items()]
    import pandas as pd
    path = tmp_path / "universe.parquet"
    pd.concat(long).to_parquet(path)
    bus = open_bus("memory://")
    feeds = {"AAPL": Feed(), "MSFT": Feed()}
    router = BarRouter(feeds)
    bus.ensure_subscription("strategy", "market-data", enable_message_ordering=True)
    bus.subscribe("strategy", router.on_message)
    settings = IngestSettings.from_env({"FARM_HOME": str(tmp_path), "FARM_INGEST_SOURCE": f"replay:{path}",
                                        "FARM_INGEST_SPEED": "0"})
    assert Ingester(settings, bus=bus, health_port=0).run(threading.Event()) == 0
    bus.close()
    assert router.counts["routed"] == 780 and router.counts["late"] == 0
    assert [b.timestamp for b in feeds["AAPL"].bars] == list(bars["AAPL"].index)
    assert feeds["MSFT"].bars[0].source == "replay"


def test_register_adds_ingest_and_archive_with_teaching_help(capsys):
    parser = argparse.ArgumentParser(prog="farm")
    register(parser.add_subparsers(dest="command"))
    for command in ("ingest", "archive"):
        try:
            parser.parse_args([command, "--help"])
        except SystemExit:
            pass
    text = capsys.readouterr().out
    for needle in ("farm ingest --source synthetic", "APCA_API_KEY_ID", "FARM_INGEST_WATCHDOG_SECONDS", "revision",
                   "FARM_BUS", "farm archive", "duckdb"):
        assert needle in text


def test_bad_settings_exit_2_with_the_reason(capsys):
    code = main(["ingest", "--source", "replay:/no/such/file.csv"])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_python_m_ingester_synthetic_demo_exits_0(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ingester", "--source", "synthetic", "--stocks", "SPY", "--speed", "0",
                           "--health-port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "FARM_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "published 390 bar(s)" in done.stderr and "every message was published (390)" in done.stderr
