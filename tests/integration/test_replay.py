"""A replayed market: the replay module, a paper run on it, and `farm paper` end to end."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import farmkit as fk
from farmkit.bus import open_bus
from farmkit.data.bars import Bars
from farmkit.errors import ConfigError
from farmkit.fmel.stores import open_store
from farmkit.live.session import paper
from farmkit.live.replay import Replay, load_replay, synthetic_continuation, trim_history
from tests.unit.test_engine import TrackedCross

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_continuation_carries_on_after_the_history():
    history = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=3, seed=7)
    more = synthetic_continuation(history, ["AAPL", "MSFT"], days=2)
    for symbol in ("AAPL", "MSFT"):
        last, first = history[symbol].index[-1], more[symbol].index[0]
        assert first > last
        # the next trading day (Jan 2-4 2024 are Tue-Thu: Friday the 5th), at the 09:30 open
        assert first.tz_convert("America/New_York") == pd.Timestamp("2024-01-05 09:30", tz="America/New_York")
        assert more[symbol]["open"].iloc[0] == pytest.approx(history[symbol]["close"].iloc[-1], rel=0.02)
        assert len(more[symbol]) == 2 * 390


def test_a_replay_publishes_every_bar_in_time_order(tmp_path):
    bars = fk.data.synthetic(["AAPL", "MSFT"], days=1, seed=3)
    bars = Bars({"AAPL": bars["AAPL"].iloc[:50], "MSFT": bars["MSFT"].iloc[10:40]})   # ragged on purpose
    bus = open_bus("memory://")
    bus.ensure_topic("market-data")
    bus.ensure_subscription("watch", "market-data")
    got, lock = [], threading.Lock()

    def on_message(message):
        with lock:
            got.append(fk.model.parse_message(message.data, message.attributes))
        message.ack()

    handle = bus.subscribe("watch", on_message)
    replay = Replay(bars, bus, speed=1e6).start()
    assert replay.finished.wait(10) and replay.error is None
    deadline = time.monotonic() + 10
    while len(got) < 80 and time.monotonic() < deadline:
        time.sleep(0.02)
    handle.close()
    bus.close()
    assert replay.published == len(replay) == 80
    assert sorted((b.symbol, b.timestamp) for b in got) == sorted(
        [(s, t) for s, f in bars.items() for t in f.index])
    assert all(b.source == "replay" for b in got)
    assert replay.interval == 60.0


def test_replay_sources_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="neither 'synthetic' nor an existing file"):
        load_replay(str(tmp_path / "nope.csv"), ["AAPL"])
    frame = fk.data.synthetic("AAPL", days=1)["AAPL"].rename_axis("timestamp").reset_index()
    path = tmp_path / "bars.csv"
    frame.assign(symbol="AAPL").to_csv(path, index=False)
    with pytest.raises(ConfigError, match="no bars for MSFT"):
        load_replay(str(path), ["AAPL", "MSFT"])
    with pytest.raises(ConfigError, match="speed must be > 0"):
        Replay(load_replay(str(path), ["AAPL"]), open_bus("memory://"), speed=0)


def test_trim_history_keeps_only_bars_before_the_replay():
    bars = fk.data.synthetic(["AAPL"], days=1)
    replay = Bars({"AAPL": bars["AAPL"].iloc[100:]})
    trimmed = trim_history(bars, replay)
    assert len(trimmed["AAPL"]) == 100 and trimmed["AAPL"].index[-1] < replay["AAPL"].index[0]


def _long_csv(bars: Bars, path: Path) -> Path:
    frames = [f.assign(symbol=s) for s, f in bars.items()]
    pd.concat(frames).rename_axis("timestamp").reset_index().to_csv(path, index=False)
    return path


def test_a_paper_run_on_a_file_replay_sees_every_bar_and_decides_as_a_backtest(farm_home, tmp_path):
    bars = fk.data.synthetic(["AAPL"], days=2, seed=5)
    frame = bars["AAPL"]
    history, live = Bars({"AAPL": frame.iloc[:390]}), Bars({"AAPL": frame.iloc[390:600]})
    path = _long_csv(live, tmp_path / "live.csv")
    res = paper(TrackedCross, ["AAPL"], history=history, replay=str(path), replay_speed=1e5,
                duration=120)   # the replay ends the run long before the safety limit
    records = fk.fmel.load(res.run_id)
    assert list(records.bar_number) == list(range(600))
    assert res.metrics["messages"] == {"routed": 210}
    reference = fk.backtest(TrackedCross, Bars({"AAPL": frame.iloc[:600]}))
    comparison = fk.fmel.compare(res.run_id, reference.run_id)
    assert comparison.identical, str(comparison)


def test_a_paper_run_stops_after_exactly_the_live_bars_asked_for(farm_home):
    frame = fk.data.synthetic(["AAPL", "MSFT"], start="2024-02-01", days=1, seed=5)
    history = Bars({s: f.iloc[:50] for s, f in frame.items()})
    res = paper(TrackedCross, ["AAPL", "MSFT"], history=history, replay="synthetic", replay_speed=1e6,
                live_bars=37, duration=120)     # at this speed a check from another thread overshoots
    records = fk.fmel.load(res.run_id)
    assert list(records.bar_number) == list(range(50 + 37))
    assert records.timestamp.iloc[50] > history["AAPL"].index[-1] >= records.timestamp.iloc[49]


def _farm(*args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "farmkit.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def cli_env(farm_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(farm_home.home), FARM_REDIS="off", FARM_PROGRESS="off")
    return env


def test_farm_paper_replays_a_file_and_streams_the_decisions(cli_env, tmp_path):
    bars = fk.data.synthetic(["AAPL", "MSFT"], start="2024-02-01", days=1, seed=9)
    path = _long_csv(Bars({s: f.iloc[:240] for s, f in bars.items()}), tmp_path / "market.csv")
    done = _farm("paper", "agents/sma-crossover", "--replay", str(path), "--speed", "20000", env=cli_env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("paper-trading sma-crossover on a") and "replay" in lines[0]
    decided = [line for line in lines if " ET  bar " in line]
    assert decided and any("BUY" in line and "fast SMA crossed above slow" in line for line in decided)
    run_id = next(line.split()[1].rstrip(":") for line in lines if line.startswith("run "))
    records = fk.fmel.load(run_id, store=open_store(f"local://{cli_env['FARM_HOME']}"))
    # the warm-up bars (the manifest's 30) and then every replayed timestamp, each once
    stamps = records.timestamp
    assert stamps.is_unique and stamps.is_monotonic_increasing
    assert set(bars["AAPL"].index[:240]) <= set(stamps)
    assert len(decided) == sum(len([d for d in json.loads(x) if d["action"] != "hold"])
                               for x in records.decisions)


def test_farm_paper_explains_what_is_wrong(cli_env, tmp_path):
    done = _farm("paper", "agents/sma-crossover", "--speed", "60", env=cli_env)
    assert done.returncode != 0 and "--replay" in done.stderr
    done = _farm("paper", str(tmp_path), "--replay", "synthetic", env=cli_env)
    assert done.returncode != 0 and "agent.yaml" in done.stderr
    done = _farm("paper", "agents/sma-crossover", "--replay", str(tmp_path / "none.csv"), env=cli_env)
    assert done.returncode != 0 and "neither 'synthetic' nor an existing file" in done.stderr


def test_farm_paper_stops_cleanly_after_exactly_the_live_bars_asked_for(cli_env):
    # --bars counts live bars: the manifest's 30 warm-up bars come first and are not among them, and the
    # session stops itself on the 120th, however fast the replay goes.
    done = _farm("paper", "agents/sma-crossover", "--replay", "synthetic", "--speed", "3000", "--bars", "120",
                 env=cli_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "did not end cleanly" not in done.stdout
    summary = next(line for line in done.stdout.splitlines() if line.startswith("run "))
    assert ": 150 bars (120 live after 30 of warm-up)," in summary, summary
    run_id = summary.split()[1].rstrip(":")
    records = fk.fmel.load(run_id, store=open_store(f"local://{cli_env['FARM_HOME']}"))
    assert list(records.bar_number) == list(range(150))
    assert np.isfinite(records.timestamp.astype("int64")).all()
