"""Paper runs that stop and resume: checkpoints, the inbox journal, the status and stop files, the
paper-mode edge of fk.backtest, and the runner service end to end."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import backtrader as bt
import nbformat
import pandas as pd
import pytest
import yaml

import farmkit as fk
from farmkit.live import checkpoint
from farmkit.bus import open_bus, publish_record
from farmkit.fmel.stores import open_store
from farmkit.live.session import paper
from tests.integration.test_paper import bars_of
from tests.local_process import free_port
from tests.pubsub_emulator import pubsub_emulator  # noqa: F401  (the session fixture)
from tests.unit.test_engine import TrackedCross


def eventually(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def publish_on_start(bus, bars):
    def run(session):
        def go():
            for bar in bars:
                publish_record(bus, "market-data", bar)
            bus.flush()
        threading.Thread(target=go, daemon=True).start()
    return run


def dying_store(farm_home, after: int):
    """The embedded store, except that from batch ``after + 1`` on nothing reaches it: what a kill
    after the ``after``-th commit leaves."""
    store = open_store(farm_home.store)
    real_write, batches = store.write_fmel, {"n": 0}

    def write_fmel(table):
        batches["n"] += 1
        if batches["n"] > after:
            raise OSError("the process is about to be killed")
        return real_write(table)

    store.write_fmel = write_fmel
    return store


def decisions(frame):
    return [[(d["action"], d.get("size")) for d in json.loads(x)] for x in frame.decisions]


def submitted(frame):
    return sum(1 for x in frame.actions for a in json.loads(x) if a["event"] == "submitted")


def test_a_crashed_run_resumes_with_every_bar_once_and_no_order_twice(farm_home, tmp_path):
    data = fk.data.synthetic("AAPL", days=1, seed=5)["AAPL"]
    history, live = data.iloc[:60], data.iloc[60:]
    live_bars = bars_of(live, "AAPL")
    state = tmp_path / "state"
    store = dying_store(farm_home, after=4)
    bus = open_bus("memory://")
    first = paper(TrackedCross, ["AAPL"], bus=bus, store=store, history=fk.Bars(AAPL=history), state_dir=state,
                  batch_bars=25, flush_seconds=1e9, max_bars=160, duration=60,
                  on_start=publish_on_start(bus, live_bars[:100]))
    bus.close()
    shutil.rmtree(farm_home.home / "spill" / first.run_id)      # the uncommitted batches die with the pod
    saved = checkpoint.load(state)
    assert saved.run_id == first.run_id and saved.bars_written == 100
    assert saved.last["AAPL"] == live.index[39].value
    # Bars 100..159 were acked on the bus but never committed: only the inbox still has them.
    assert len((state / "inbox.jsonl").read_text().splitlines()) == 60

    store = open_store(farm_home.store)
    bus = open_bus("memory://")
    # Pub/Sub redelivers a few acked-late bars and then the rest of the stream.
    second = paper(TrackedCross, ["AAPL"], bus=bus, store=store, history=fk.Bars(AAPL=history), state_dir=state,
                   batch_bars=25, flush_seconds=1e9, max_bars=len(data) - 100, duration=60,
                   on_start=publish_on_start(bus, live_bars[90:]))
    bus.close()
    assert second.run_id == first.run_id
    assert second.metrics["messages"]["routed"] == len(live) - 40     # inbox 60 + bus 230 new bars
    assert second.metrics["messages"]["duplicate"] == 10

    records = store.fmel(first.run_id)
    assert list(records.bar_number) == list(range(len(data))) and records.record_id.is_unique
    raw = store.sql("SELECT count(*) AS n FROM fmel_raw", run_id=first.run_id).n[0]
    assert raw == len(data)                                            # no duplicate even before dedupe
    reference = fk.backtest(TrackedCross, fk.Bars(AAPL=data)).fmel
    assert decisions(records) == decisions(reference)
    assert records.strategy_state.tolist() == reference.strategy_state.tolist()   # positions, cash, indicators
    assert submitted(records) == submitted(reference) > 0
    assert checkpoint.load(state).bars_written == len(data)
    assert (state / "inbox.jsonl").read_text() == ""


def test_stop_file_status_file_and_the_paper_edge_of_backtest(farm_home, tmp_path, monkeypatch):
    data = fk.data.synthetic("AAPL", days=1, seed=5)
    state = tmp_path / "state"
    monkeypatch.setenv("FARM_MODE", "paper")
    monkeypatch.setenv("FARM_STATE_DIR", str(state))
    monkeypatch.setenv("FARM_AGENT_ID", "edge-agent")
    monkeypatch.setenv("FARM_WARMUP_BARS", "50")
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("res", fk.backtest(TrackedCross, data, cash=50_000)))
    thread.start()
    status = eventually(lambda: (s := checkpoint.read_json(state / "status.json")) and s["bars_processed"] == 50
                        and s, what="the 50 warm-up bars")
    assert status["state"] == "live" and status["agent_id"] == "edge-agent" and status["fmel_backlog"] >= 0
    checkpoint.request_stop(state)
    thread.join(30)
    assert not thread.is_alive()
    res = out["res"]
    run = fk.runs().set_index("run_id").loc[res.run_id]
    assert run["mode"] == "paper" and run.status == "done" and run.agent_id == "edge-agent"
    assert len(fk.fmel.load(res.run_id)) == 50
    final = checkpoint.read_json(state / "status.json")
    assert final["state"] == "stopped" and final["fmel_backlog"] == 0
    assert checkpoint.load(state).bars_written == 50


# -- the runner service, end to end on the Pub/Sub emulator ------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "notebooks" / "strategies" / "sma_crossover.ipynb"
SMALL = dict(symbols=["AAPL"], start="2024-01-02", days=1, fast=3, slow=10, size=10, cash=100_000.0,
             commission=0.0005, seed=7)


def make_agent(folder: Path, params: dict = SMALL) -> Path:
    """An agent as `farm promote` makes one, from the SMA notebook with small parameters."""
    nb = nbformat.read(SOURCE, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "agent.ipynb")
    manifest = {"name": folder.name, "strategy": "SmaCross", "notebook": "agent.ipynb",
                "parameters": [{"name": k, "type": type(v).__name__, "default": v} for k, v in params.items()],
                "symbols": params["symbols"], "bar_size": "1min", "warmup_bars": params["slow"]}
    (folder / "agent.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def notebook_strategy():
    namespace: dict = {}
    source = next(c.source for c in nbformat.read(SOURCE, as_version=4).cells if "class SmaCross" in c.source)
    exec("import backtrader as bt\nimport farmkit as fk\n" + source, namespace)
    return namespace["SmaCross"]


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class RunnerProcess:
    def __init__(self, agent: Path, env: dict, log: Path):
        self.port = int(env["FARM_HEALTH_PORT"])
        self.log = log
        with open(log, "ab") as out:
            # Its own process group: a SIGKILL of the group is a pod dying, kernel included.
            self.proc = subprocess.Popen([sys.executable, "-m", "runner", str(agent)], cwd=REPO, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def metrics(self) -> str:
        return http(self.port, "/metrics")[1]

    def processed(self) -> float:
        return metric(self.metrics(), "farm_bars_processed_total") or 0.0

    def wait_live(self):
        eventually(lambda: http(self.port, "/healthz")[0] == 200, 30, "/healthz")
        eventually(lambda: http(self.port, "/readyz")[0] == 200 and "live" in http(self.port, "/readyz")[1]
                   or self.proc.poll() is not None, 90, "the runner to be live")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.mark.service
def test_runner_on_the_emulator_survives_sigkill_and_stops_cleanly_on_sigterm(tmp_path, pubsub_emulator,
                                                                              monkeypatch):
    agent = make_agent(tmp_path / "agents" / "sma-e2e")
    home, state = tmp_path / "farm", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(PUBSUB_EMULATOR_HOST=pubsub_emulator.host, FARM_HOME=str(home), FARM_BUS="pubsub://farm-local",
               FARM_STATE_DIR=str(state), FARM_SUBSCRIPTION="runner-e2e", FARM_HEALTH_PORT=str(free_port()),
               PYTHONPATH=str(REPO))
    history = fk.data.synthetic(["AAPL"], start=SMALL["start"], days=1, freq="1min", seed=7)["AAPL"]
    later = fk.data.synthetic(["AAPL"], start="2024-01-03", days=1, freq="1min", seed=8)["AAPL"].iloc[:80]
    live = bars_of(later, "AAPL")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    bus = open_bus("pubsub://farm-local")
    warmup = SMALL["slow"]
    started = time.monotonic()

    first = RunnerProcess(agent, env, tmp_path / "runner.log")
    first.wait_live()
    for bar in live[:20]:
        publish_record(bus, "market-data", bar)
    bus.flush()
    eventually(lambda: first.processed() >= warmup + 20, 60, "20 live bars in the first runner")
    time.sleep(1.2)     # the scenario, not a wait: a gap longer than the FMEL flush interval, so a batch commits
    for bar in live[20:40]:
        publish_record(bus, "market-data", bar)
    bus.flush()
    eventually(lambda: first.processed() >= warmup + 40, 60, "40 live bars in the first runner")
    eventually(lambda: checkpoint.load(state).bars_written > warmup, 30, "a checkpoint in the live part")
    first.kill()                                   # SIGKILL, kernel and all: no flush, no goodbye
    committed = checkpoint.load(state)
    journaled = len((state / "inbox.jsonl").read_text().splitlines())
    # What a kill leaves: bars decided and acked whose FMEL is not committed, kept only by the inbox.
    assert journaled == 40 - max(0, committed.bars_written - warmup)
    print(f"killed with {committed.bars_written} bars committed, {journaled} in the inbox")

    second = RunnerProcess(agent, env, tmp_path / "runner.log")
    second.wait_live()
    for bar in live[30:]:                          # the publisher repeats a few: duplicates on the bus
        publish_record(bus, "market-data", bar)
    bus.flush()
    eventually(lambda: (s := checkpoint.read_json(state / "status.json")) and s["next_bar_number"] >= warmup + 80,
               60, "all 80 live bars")
    text = second.metrics()
    assert metric(text, "farm_ready") == 1 and metric(text, "farm_last_bar_age_seconds") is not None
    assert metric(text, "farm_decision_lag_seconds") is not None and 'outcome="duplicate"' in text
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(30) == 0, (tmp_path / "runner.log").read_text()[-3000:]
    bus.close()
    elapsed = time.monotonic() - started

    saved = checkpoint.load(state)
    assert saved.bars_written == warmup + 80
    store = open_store(f"local://{home}")
    records = store.fmel(saved.run_id)
    assert list(records.bar_number) == list(range(warmup + 80)) and records.record_id.is_unique
    reference_bars = fk.Bars(AAPL=pd.concat([history.iloc[-warmup:], later]))
    reference = fk.backtest(notebook_strategy(), reference_bars, cash=SMALL["cash"], commission=SMALL["commission"],
                            fast=SMALL["fast"], slow=SMALL["slow"], size=SMALL["size"],
                            settings=fk.Settings.from_env({"FARM_HOME": str(tmp_path / "reference")})).fmel
    assert decisions(records) == decisions(reference)
    assert submitted(records) == submitted(reference) > 0
    assert records.strategy_state.tolist() == reference.strategy_state.tolist()
    print(f"runner end to end: {elapsed:.1f} s")


class PairCross(fk.Strategy):
    """An SMA cross on every symbol: what a multi-symbol agent looks like."""
    params = dict(fast=5, slow=20)

    def __init__(self):
        self.cross = {d._name: bt.ind.CrossOver(bt.ind.SMA(d.close, period=self.p.fast),
                                                bt.ind.SMA(d.close, period=self.p.slow)) for d in self.datas}

    def next(self):
        for data in self.datas:
            cross = self.cross[data._name][0]
            if cross > 0 and not self.getposition(data):
                self.buy(data=data, size=10, reason="fast above slow")
            elif cross < 0 and self.getposition(data):
                self.close(data=data, reason="fast below slow")


def test_a_multi_symbol_run_resumes_with_every_bar_of_every_symbol_once(farm_home, tmp_path):
    data = fk.data.synthetic(["AAPL", "MSFT"], days=1, seed=8)
    history = fk.Bars({s: f.iloc[:60] for s, f in data.items()})
    live = {s: bars_of(f.iloc[60:], s) for s, f in data.items()}
    n = len(data["AAPL"])

    def interleaved(start, stop, chunk=None):
        # One timestamp's bars together; with chunk, a symbol runs ahead of the other chunk by chunk
        # (out of order across symbols, in order within each, as Pub/Sub's ordering keys allow).
        if chunk is None:
            return [live[s][i] for i in range(start, stop) for s in ("AAPL", "MSFT")]
        out = []
        for first in range(start, stop, chunk):
            for symbol in ("MSFT", "AAPL"):
                out += live[symbol][first:min(first + chunk, stop)]
        return out

    state = tmp_path / "state"
    store = dying_store(farm_home, after=4)
    bus = open_bus("memory://")
    first = paper(PairCross, ["AAPL", "MSFT"], bus=bus, store=store, history=history, state_dir=state,
                  batch_bars=25, flush_seconds=1e9, max_bars=160, duration=60,
                  on_start=publish_on_start(bus, interleaved(0, 100)))
    bus.close()
    shutil.rmtree(farm_home.home / "spill" / first.run_id)
    saved = checkpoint.load(state)
    assert saved.bars_written == 100
    assert saved.last == {s: data[s].index[99].value for s in ("AAPL", "MSFT")}

    store = open_store(farm_home.store)
    bus = open_bus("memory://")
    second = paper(PairCross, ["AAPL", "MSFT"], bus=bus, store=store, history=history, state_dir=state,
                   batch_bars=25, flush_seconds=1e9, max_bars=n - 100, duration=60,
                   on_start=publish_on_start(bus, interleaved(90, n - 60, chunk=7)))
    bus.close()
    assert second.run_id == first.run_id
    assert second.metrics["messages"]["duplicate"] == 2 * 10
    assert second.metrics["messages"]["routed"] == 2 * (n - 100)

    records = store.fmel(first.run_id)
    assert list(records.bar_number) == list(range(n)) and records.record_id.is_unique
    assert list(records.timestamp) == list(data["AAPL"].index)
    reference = fk.backtest(PairCross, data).fmel
    assert decisions(records) == decisions(reference)
    assert records.strategy_state.tolist() == reference.strategy_state.tolist()
    assert submitted(records) == submitted(reference) > 2
    market = [json.loads(x) for x in records.market_state]
    assert all(set(m) >= {"AAPL", "MSFT"} for m in market[60:]), "every bar saw both symbols"


@pytest.mark.service
def test_a_muted_symbol_fails_readiness_shows_in_metrics_and_marks_the_decisions_in_fmel(tmp_path, pubsub_emulator,
                                                                                       monkeypatch):
    # Crypto pairs: their market is always open, so the test does not depend on the time of day.
    symbols = ["BTC/USD", "ETH/USD"]
    now = pd.Timestamp.now(tz="UTC").floor("min")
    params = {**SMALL, "symbols": symbols, "start": (now - pd.Timedelta(days=3)).strftime("%Y-%m-%d")}
    agent = make_agent(tmp_path / "agents" / "sma-stale", params)
    home, state = tmp_path / "farm", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(PUBSUB_EMULATOR_HOST=pubsub_emulator.host, FARM_HOME=str(home), FARM_BUS="pubsub://farm-local",
               FARM_STATE_DIR=str(state), FARM_SUBSCRIPTION="runner-stale", FARM_HEALTH_PORT=str(free_port()),
               FARM_STALE_AFTER="2", PYTHONPATH=str(REPO))
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    bus = open_bus("pubsub://farm-local")
    bus.ensure_topic("market-data")
    # Bars stamped in the last few hours, one minute apart, published a timestamp every 0.2 s.
    index = pd.date_range(end=now, periods=240, freq="1min", tz="UTC")
    live = {s: bars_of(f.iloc[:240].set_axis(index), s) for s, f in
            fk.data.synthetic(symbols, start="2024-01-02", days=1, freq="1min", seed=9).items()}
    muted, stop = threading.Event(), threading.Event()
    sent = {"i": 0, "eth_last": None, "eth_stamp": None}

    def publish():
        for i in range(240):
            if stop.is_set():
                return
            publish_record(bus, "market-data", live["BTC/USD"][i])
            if not muted.is_set():
                publish_record(bus, "market-data", live["ETH/USD"][i])
                bus.flush()
                sent["eth_last"], sent["eth_stamp"] = time.time(), live["ETH/USD"][i].timestamp
            bus.flush()
            sent["i"] = i + 1
            time.sleep(0.2)

    runner = RunnerProcess(agent, env, tmp_path / "runner.log")
    publisher = threading.Thread(target=publish, daemon=True)
    try:
        eventually(lambda: http(runner.port, "/healthz")[0] == 200, 30, "/healthz")
        publisher.start()      # bars must flow for the pod to be ready: a 2 s threshold
        runner.wait_live()
        eventually(lambda: runner.processed() >= SMALL["slow"] + 10, 60, "10 live bars of both symbols")
        code, body = http(runner.port, "/readyz")
        assert code == 200 and "live" in body, body
        assert metric(runner.metrics(), "farm_runner_stale_symbols") == 0

        muted.set()
        eventually(lambda: sent["eth_last"] is not None and sent["i"] > 0, 5, "the mute")
        last_eth = sent["eth_last"]
        failed = eventually(lambda: (r := http(runner.port, "/readyz"))[0] == 503 and r, 15, "/readyz to fail")
        detection = time.time() - last_eth
        assert "ETH/USD" in failed[1] and "BTC/USD" not in failed[1] and "stale" in failed[1], failed[1]
        print(f"stale symbol detected {detection:.2f} s after its last bar (threshold 2 s): {failed[1].strip()}")
        assert detection < 10
        text = runner.metrics()
        assert metric(text, "farm_runner_stale_symbols") == 1
        assert 'farm_runner_stale{agent="sma-stale",symbol="ETH/USD"} 1' in text
        assert 'farm_runner_stale{agent="sma-stale",symbol="BTC/USD"} 0' in text
        ages = {line.split('symbol="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("farm_runner_bar_age_seconds{")}
        assert ages["ETH/USD"] > 2 > ages["BTC/USD"]
        marked_now = metric(text, "farm_runner_stale_decisions_total")
        eventually(lambda: (metric(runner.metrics(), "farm_runner_stale_decisions_total") or 0) >= marked_now + 5,
                   30, "decisions taken on BTC/USD bars while ETH/USD is stale")
    finally:
        stop.set()
        if publisher.ident is not None:
            publisher.join(10)
        runner.proc.send_signal(signal.SIGTERM)
        code = runner.proc.wait(30)
        bus.close()
    assert code == 0, (tmp_path / "runner.log").read_text()[-3000:]

    saved = checkpoint.load(state)
    records = open_store(f"local://{home}").fmel(saved.run_id)
    marks = [(ts, [e for e in json.loads(m).get("events", []) if e["event"] == "stale"])
             for ts, m in zip(records.timestamp, records.market_state)]
    marked = [(ts, events) for ts, events in marks if events]
    assert len(marked) >= 5
    assert all({e["symbol"] for e in events} == {"ETH/USD"} for _, events in marked)
    assert all("no bar for" in e["detail"] for _, events in marked for e in events)
    assert all(ts > sent["eth_stamp"] for ts, _ in marked), "no bar before the mute is marked"
    run = open_store(f"local://{home}").runs.get(saved.run_id)
    assert run["metrics"]["stale_decisions"] == len(marked)
