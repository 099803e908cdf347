"""The API's adapters against real servers on loopback: agents in a GCS bucket (gcp-storage-emulator,
driven by the real google-cloud-storage client), the alpaca-paper broker view (alpaca-py against the
local Alpaca-protocol server), `farm serve` as a process, and the Cloud Functions entry point."""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import farmkit as fk
from farmkit.live import checkpoint
from farmkit.ops import promote
from farmkit.ops.agents import GcsAgentStore, LocalAgentStore, open_agent_store
from farmkit.api import ApiSettings, create_app, register
from farmkit.api.broker import BrokerView
from farmkit.brokers.alpaca_paper import client_order_id
from farmkit.errors import ConfigError
from tests.alpaca_server import AlpacaServer
from tests.conftest import need
from tests.local_process import LocalProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agents" / "sma-crossover"


class StorageEmulator(LocalProcess):
    name = "gcs-emulator"
    ready_timeout = 20.0

    def command(self):
        return [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--port", str(self.port),
                "--host", "127.0.0.1", "--in-memory", "--default-bucket", "farm-agents", "-q"]

    def ready(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/storage/v1/b/farm-agents", timeout=1) as r:
            return r.status == 200


@pytest.fixture(scope="module")
def gcs():
    need(Path(sys.executable).with_name("gcp-storage-emulator").exists(),
         "gcp-storage-emulator is not installed (pip install 'thefarm[test]')")
    with StorageEmulator() as emulator:
        yield emulator


def gcs_store(emulator, tmp_path, prefix="agents"):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    client = storage.Client(project="farm-test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": f"http://127.0.0.1:{emulator.port}"})
    return GcsAgentStore("farm-agents", prefix, client=client, cache=tmp_path / "cache")


def test_gcs_agent_store_round_trip(gcs, tmp_path):
    store = gcs_store(gcs, tmp_path)
    store.check()
    assert store.list() == [] and store.get("sma-crossover") is None
    record = store.put("sma-crossover", AGENT, owner="alice")
    assert (record.name, record.owner, record.manifest["strategy"]) == ("sma-crossover", "alice", "SmaCross")
    store.put("other", AGENT, owner="bob")
    assert [(r.name, r.owner) for r in store.list()] == [("other", "bob"), ("sma-crossover", "alice")]
    folder = store.materialize("sma-crossover")
    assert (folder / "agent.ipynb").read_bytes() == (AGENT / "agent.ipynb").read_bytes()
    assert promote.load_manifest(folder)["owner"] == "alice"
    assert store.delete("other") and not store.delete("other") and store.get("other") is None
    assert [r.name for r in store.list()] == ["sma-crossover"]
    assert [r.name for r in gcs_store(gcs, tmp_path, prefix="elsewhere").list()] == []


def test_agents_api_on_a_gcs_bucket(gcs, tmp_path):
    store = gcs_store(gcs, tmp_path, prefix="api")
    store.put("sma-crossover", AGENT, owner="local")
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off"})
    client = TestClient(create_app(settings, ApiSettings(token="t"), agents=store))
    auth = {"Authorization": "Bearer t"}
    assert [a["name"] for a in client.get("/api/agents", headers=auth).json()["items"]] == ["sma-crossover"]
    assert client.delete("/api/agents/sma-crossover", headers=auth).status_code == 204
    assert client.get("/api/agents", headers=auth).json()["total"] == 0


def test_agent_store_locations(tmp_path):
    assert isinstance(open_agent_store(tmp_path), LocalAgentStore)
    assert open_agent_store(f"file://{tmp_path}").root == tmp_path
    with pytest.raises(ConfigError, match="gs://BUCKET"):
        open_agent_store("s3://bucket")
    local = LocalAgentStore(tmp_path / "agents")
    local.put("a", AGENT, owner="x")
    local.put("a", AGENT, owner="y")          # replaced whole
    assert local.get("a").owner == "y" and [r.name for r in local.list()] == ["a"]
    assert local.get("../a") is None and local.get("A") is None


@pytest.fixture(scope="module")
def alpaca():
    with AlpacaServer(prices={"AAPL": 100.0, "MSFT": 400.0}) as server:
        yield server


def test_alpaca_paper_broker_view_shows_each_agent_only_its_own_sub_account(alpaca, tmp_path):
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest
    alpaca.reset()
    trading = TradingClient(alpaca.key_id, alpaca.secret_key, paper=True, url_override=alpaca.url)
    for cid, symbol, qty, side in ((client_order_id("paper-run-1", 0), "AAPL", 3, OrderSide.BUY),
                                   (client_order_id("paper-run-1", 1), "MSFT", 2, OrderSide.BUY),
                                   (client_order_id("paper-run-1", 2), "AAPL", 1, OrderSide.SELL),
                                   (client_order_id("paper-run-2", 0), "AAPL", 5, OrderSide.BUY),
                                   ("someone-elses-order", "AAPL", 7, OrderSide.BUY)):
        trading.submit_order(MarketOrderRequest(symbol=symbol, qty=qty, side=side,
                                                time_in_force=TimeInForce.DAY, client_order_id=cid))
    state, other = tmp_path / "state", tmp_path / "other"
    view = BrokerView("alpaca-paper://", environ={**alpaca.environ, "APCA_API_BASE_URL": alpaca.url})
    assert view.orders("a", state) == [] and view.positions("a", state) == []   # no run yet: nothing is the agent's
    assert view.account("a", state)["cash"] is None
    checkpoint.save(checkpoint.Checkpoint(run_id="paper-run-1", agent_id="a", bars_written=3, start_value=1e4), state)
    checkpoint.save(checkpoint.Checkpoint(run_id="paper-run-2", agent_id="b", bars_written=3, start_value=5e3), other)
    account = view.account("a", state)
    assert account["broker"] == "alpaca-paper" and account["run_id"] == "paper-run-1"
    # its own fills only, from the cash the run started with: not the account's 15 AAPL nor its cash
    assert account["cash"] == pytest.approx(10_000 - 3 * 100 - 2 * 400 + 1 * 100)
    assert account["equity"] == pytest.approx(account["cash"] + 2 * 100 + 2 * 400)
    positions = {p["symbol"]: p for p in view.positions("a", state)}
    assert {s: p["qty"] for s, p in positions.items()} == {"AAPL": 2.0, "MSFT": 2.0}
    assert positions["AAPL"]["avg_price"] == pytest.approx(100.0)
    assert positions["MSFT"]["market_value"] == pytest.approx(800.0)
    assert {p["symbol"]: p["qty"] for p in view.positions("b", other)} == {"AAPL": 5.0}
    assert view.account("b", other)["cash"] == pytest.approx(5_000 - 5 * 100)
    orders = view.orders("a", state)
    assert sorted(o["client_order_id"] for o in orders) == ["paper-run-1-0", "paper-run-1-1", "paper-run-1-2"]
    assert {o["status"] for o in orders} == {"filled"} and {o["side"] for o in orders} == {"buy", "sell"}


def test_alpaca_broker_without_keys_is_a_503_that_names_them(tmp_path):
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off"})
    agents = LocalAgentStore(tmp_path / "agents")
    agents.put("sma-crossover", AGENT, owner="local")
    app = create_app(settings, ApiSettings(token="t"), agents=agents, broker=BrokerView("alpaca-paper://", environ={}))
    response = TestClient(app).get("/api/broker/sma-crossover/account", headers={"Authorization": "Bearer t"})
    assert response.status_code == 503 and "APCA_API_KEY_ID" in response.json()["message"]


def test_cloud_function_entry_point_serves_the_app(tmp_path, monkeypatch):
    from functions_framework.aio import create_asgi_app

    import farmkit.api.function as function
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off"})
    agents = LocalAgentStore(tmp_path / "agents")
    agents.put("sma-crossover", AGENT, owner="local")
    monkeypatch.setattr(function, "_app", create_app(settings, ApiSettings(token="t"), agents=agents))
    # What is deployed: a main.py that imports the entry point; functions-framework builds its ASGI app from it.
    main = tmp_path / "main.py"
    main.write_text("from farmkit.api.function import farm_api\n")
    client = TestClient(create_asgi_app(target="farm_api", source=str(main), signature_type="http"))
    listed = client.get("/api/agents", params={"limit": 5}, headers={"Authorization": "Bearer t"})
    assert listed.status_code == 200 and listed.json()["items"][0]["name"] == "sma-crossover"
    assert client.get("/api/agents").status_code == 401
    created = client.post("/api/agents", json={"name": "x", "notebook": {"cells": 1}}, headers={"Authorization": "Bearer t"})
    assert created.status_code == 422 and created.json()["error"] == "invalid_notebook"   # the body got through
    assert client.get("/healthz").json()["status"] == "ok"


def test_serve_registers_a_subcommand():
    parser = argparse.ArgumentParser(prog="farm")
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--cloud", "--port", "9000"])
    assert (args.cloud, args.port, args.host, args.handler.__name__) == (True, 9000, "127.0.0.1", "serve")
    assert parser.parse_args(["serve"]).cloud is None and parser.parse_args(["serve", "--local"]).cloud is False


def test_farm_serve_prints_a_token_and_the_api_answers_with_it(tmp_path):
    port = free_port()
    script = ("import argparse, sys; from farmkit.api import register; p = argparse.ArgumentParser(); "
              "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(tmp_path / "farm"), FARM_REDIS="off", FARM_API_AGENTS=str(tmp_path / "agents"))
    proc = subprocess.Popen([sys.executable, "-c", script, "serve", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        token = re.search(r"token: (\S+)", "".join(lines)).group(1)
        assert f"http://localhost:{port}/docs" in lines[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "farm serve did not start"
                time.sleep(0.05)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/agents",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.loads(reply.read())["total"] == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/agents", timeout=10)
        assert refused.value.code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
