"""A runner killed in the middle of a stream on the Pub/Sub emulator, while bars keep coming: the
resumed run has every bar once and places no order twice, whatever Pub/Sub redelivers and when.

What the emulator does here: the messages a killed subscriber held on an ordered subscription come
back after 10 to 60 s, or (seen with a backlog, and with two symbols) not within 400 s, and meanwhile
nothing newer of that ordering key is delivered either. The run fills what does not come from
Alpaca's REST bars (FARM_BACKFILL=alpaca; a local server speaking Alpaca's protocol, which has each bar
from the moment it is published, as the exchange has it).
"""

import json
import os
import signal
import threading
import time

import pandas as pd
import psutil
import pytest

import farmkit as fk
from farmkit.bus import open_bus, publish_record
from farmkit.fmel.stores import open_store
from farmkit.live import checkpoint
from tests.integration.test_paper import bars_of
from tests.integration.test_runner import (REPO, SMALL, RunnerProcess, decisions, eventually, make_agent,
                                           notebook_strategy, submitted)
from tests.alpaca_server import AlpacaServer
from tests.local_process import free_port
from tests.pubsub_emulator import pubsub_emulator  # noqa: F401  (the session fixture)

LIVE_BARS = 390             # a day of minute bars
PUBLISH_EVERY = 0.02        # seconds between two bars on the topic: faster than the runner takes them
KILL_AFTER = 120            # live bars the first runner has processed when it is killed


class Pod(RunnerProcess):
    """The runner and its kernel: papermill starts the kernel in a session of its own, so a SIGKILL of
    the runner's process group alone leaves it trading for up to a second. A pod dies all at once."""

    def kill(self):
        kernels = psutil.Process(self.proc.pid).children(recursive=True)
        super().kill()
        for child in kernels:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


class SteadyPublisher(threading.Thread):
    """Publishes the bars one by one at a steady rate, whatever happens to the runner."""

    def __init__(self, bus, bars, every: float, on_sent=lambda sent: None):
        super().__init__(daemon=True, name="steady-publisher")
        self.bus, self.bars, self.every, self.on_sent = bus, bars, every, on_sent
        self.sent = 0
        self.stop = threading.Event()

    def run(self):
        next_at = time.monotonic()
        for bar in self.bars:
            if self.stop.is_set():
                return
            publish_record(self.bus, "market-data", bar)
            self.bus.flush()
            self.sent += 1
            self.on_sent(self.sent)
            next_at += self.every
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def order_bars(frame) -> list:
    """The timestamps of the bars whose FMEL has a submitted order."""
    return [t for t, x in zip(frame.timestamp, frame.actions) if any(a["event"] == "submitted" for a in json.loads(x))]


def status_of(state, since: float) -> dict:
    """The paper session's status, if it was written by a process started after ``since``."""
    status = checkpoint.read_json(state / "status.json") or {}
    return status if status.get("updated_at", 0) > since else {}


@pytest.mark.service
def test_a_runner_killed_mid_stream_resumes_with_every_bar_once_and_no_order_twice(tmp_path, pubsub_emulator,
                                                                                 monkeypatch):
    agent = make_agent(tmp_path / "agents" / "sma-midstream")
    home, state = tmp_path / "farm", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    history = fk.data.synthetic(["AAPL"], start=SMALL["start"], days=1, freq="1min", seed=7)["AAPL"]
    later = fk.data.synthetic(["AAPL"], start="2024-01-03", days=1, freq="1min", seed=8)["AAPL"]
    assert len(later) == LIVE_BARS
    alpaca = AlpacaServer(stock_bars={"AAPL": later.iloc[:0]}, page_size=1000).start()
    # FARM_STALE_AFTER: how long a symbol may be silent before its bars are asked of Alpaca.
    env.update(PUBSUB_EMULATOR_HOST=pubsub_emulator.host, FARM_HOME=str(home), FARM_BUS="pubsub://farm-local",
               FARM_STATE_DIR=str(state), FARM_SUBSCRIPTION="runner-midstream", FARM_HEALTH_PORT=str(free_port()),
               FARM_BACKFILL="alpaca", FARM_STALE_AFTER="1", FARM_REDIS="off", APCA_API_DATA_URL=alpaca.url,
               **alpaca.environ, PYTHONPATH=str(REPO))
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    bus = open_bus("pubsub://farm-local")
    warmup = SMALL["slow"]
    log = tmp_path / "runner.log"
    publisher = SteadyPublisher(bus, bars_of(later, "AAPL"), PUBLISH_EVERY,
                                on_sent=lambda sent: alpaca.stock_bars.update(AAPL=later.iloc[:sent]))
    pods = []
    try:
        started = time.time()
        first = Pod(agent, env, log)
        pods.append(first)
        # The status file, not /readyz: a symbol silent for a second reads stale while New York is open.
        eventually(lambda: status_of(state, started).get("state") == "live" or first.proc.poll() is not None,
                   90, "the first runner to be live")
        assert first.proc.poll() is None, log.read_text()[-3000:]
        publisher.start()
        eventually(lambda: first.processed() >= warmup + KILL_AFTER, 60, f"{KILL_AFTER} live bars in the first runner")
        first.kill()                                # SIGKILL mid-stream, kernel and all: the publisher goes on
        killed_at, sent_at_kill = time.time(), publisher.sent
        assert sent_at_kill < LIVE_BARS, "the stream must still be flowing when the runner dies"
        resumed = checkpoint.load(state)

        second = Pod(agent, env, log)
        pods.append(second)
        publisher.join(60)
        assert not publisher.is_alive()
        # Pub/Sub alone gives the dead subscriber's messages back once their lease lapses, about 60 s
        # after the kill here: the run does not wait for that.
        eventually(lambda: status_of(state, killed_at).get("next_bar_number", 0) >= warmup + LIVE_BARS
                   or second.proc.poll() is not None, 30, "every bar in the resumed runner, before Pub/Sub "
                   "redelivers what the killed one held")
        assert second.proc.poll() is None, log.read_text()[-3000:]
        caught_up = time.time() - killed_at
        status = status_of(state, killed_at)
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        publisher.stop.set()
        for pod in pods:
            if pod.proc.poll() is None:
                pod.kill()
        bus.close()
        alpaca.stop()
    print(f"killed with {resumed.bars_written - warmup} live bars committed, after {sent_at_kill} of {LIVE_BARS} "
          f"were published; every bar in the resumed run {caught_up:.1f} s after the kill; messages "
          f"{status['messages']}, {status['bars_backfilled']} bar(s) from Alpaca in "
          f"{len(alpaca.requests_to('/v2/stocks/bars'))} request(s)")

    saved = checkpoint.load(state)
    records = open_store(f"local://{home}").fmel(saved.run_id)
    assert saved.run_id == resumed.run_id
    assert list(records.bar_number) == list(range(warmup + LIVE_BARS)) and records.record_id.is_unique
    assert list(records.timestamp[warmup:]) == list(later.index), "each live bar once, in order"
    reference_bars = fk.Bars(AAPL=pd.concat([history.iloc[-warmup:], later]))
    reference = fk.backtest(notebook_strategy(), reference_bars, cash=SMALL["cash"], commission=SMALL["commission"],
                            fast=SMALL["fast"], slow=SMALL["slow"], size=SMALL["size"],
                            settings=fk.Settings.from_env({"FARM_HOME": str(tmp_path / "reference")})).fmel
    assert decisions(records) == decisions(reference)
    assert submitted(records) == submitted(reference) > 0
    assert order_bars(records) == order_bars(reference), "no order placed twice, none missing"
    assert records.strategy_state.tolist() == reference.strategy_state.tolist()
    events = [e for m in records.market_state for e in json.loads(m).get("events", [])]
    assert not [e for e in events if e["event"] in ("gap", "late")], events
    filled = sum(int(e["detail"].split(" ", 1)[0]) for e in events if e["event"] == "backfill")
    assert filled == status["bars_backfilled"], "every filled bar is marked in FMEL"
