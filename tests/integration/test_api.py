"""The REST API end to end over HTTP (Starlette's TestClient: the real app, no network hop): Firebase
ID tokens signed with a local RSA key served as the JWKS, a real redis-server for leaderboards and rate
limits, FMEL of real backtests in the embedded store, agents in a folder."""

import json
import shutil
import threading
import time
from pathlib import Path

import nbformat
import pytest
import redis
import yaml
from fastapi.testclient import TestClient

import farmkit as fk
from farmkit.fmel.stores import open_store
from farmkit.live import checkpoint
from farmkit.ops.agents import LocalAgentStore
from farmkit.api import ApiSettings, create_app
from tests.conftest import need
from tests.integration.test_promote import TINY_STRATEGY
from tests.jwks_server import JwksServer, new_key
from tests.local_process import free_port
from tests.redis_server import redis_server  # noqa: F401  (the session fixture)
from tests.unit.test_engine import TrackedCross

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "farm-test"


def create_agent(client, body, headers, *, timeout=120.0):
    """POST /api/agents and follow its check (202, then its status URL) until it has an outcome. Returns
    every answer, the last one being the outcome (an answer that is no 202 is its own outcome)."""
    answers = []

    def ask():
        answers.append(client.post("/api/agents", json=body, headers=headers))
        if answers[-1].status_code != 202:
            return
        url = answers[-1].json()["status_url"]
        while True:
            time.sleep(0.2)     # a poll interval
            answers.append(client.get(url, headers=headers))
            if answers[-1].status_code != 200 or answers[-1].json()["state"] in ("passed", "failed"):
                return
    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout)
    assert not asking.is_alive(), f"POST /api/agents had no outcome after {timeout:.0f} s: {answers[-1:]}"
    return answers


def add_agent(store, name, owner):
    src = ROOT / "agents" / "sma-crossover"
    folder = store.root.parent / "staging" / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "agent.ipynb", folder / "agent.ipynb")
    manifest = yaml.safe_load((src / "agent.yaml").read_text())
    manifest["name"] = name
    (folder / "agent.yaml").write_text(yaml.safe_dump(manifest))
    return store.put(name, folder, owner=owner)


@pytest.fixture(scope="module")
def jwks():
    with JwksServer() as server:
        yield server


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_server, jwks):  # noqa: F811
    redis_server.flush()
    home = tmp_path_factory.mktemp("api")
    settings = fk.Settings.from_env({"FARM_HOME": str(home / "farm"), "FARM_REDIS": redis_server.url,
                                     "FARM_PROGRESS": "off"})
    agents = LocalAgentStore(home / "agents")
    alice, bob = add_agent(agents, "alice-cross", "alice"), add_agent(agents, "bob-cross", "bob")
    bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=1, freq="1min", seed=3)
    # As the runner registers an agent's runs: with its owner and the agent's id (FARM_OWNER, FARM_AGENT_UID).
    mine, theirs = (settings.replace(owner=a.owner, agent_uid=a.uid) for a in (alice, bob))
    runs = {"a1": fk.backtest(TrackedCross, bars, agent_id="alice-cross", settings=mine, fast=5).run_id,
            "a2": fk.backtest(TrackedCross, bars, agent_id="alice-cross", settings=mine, fast=8).run_id,
            "b1": fk.backtest(TrackedCross, bars, agent_id="bob-cross", settings=theirs).run_id,
            "anon": fk.backtest(TrackedCross, bars, agent_id="alice-cross", settings=settings).run_id}
    api = ApiSettings(auth="firebase", project=PROJECT, certs_url=jwks.url, agents=str(agents.root),
                      rate=1000, burst=1000)
    app = create_app(settings, api)
    return {"settings": settings, "agents": agents, "runs": runs, "app": app, "client": TestClient(app),
            "api": api, "home": home}


def headers(jwks, uid="alice", **kwargs):
    return {"Authorization": f"Bearer {jwks.token(uid, project=PROJECT, **kwargs)}"}


def assert_error(response, status, code=None, text=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code
    if text:
        assert text in body["message"], body["message"]
    return body


# --- auth -------------------------------------------------------------------------------------------

def test_no_token_is_401_with_how_to_send_one(world):
    response = world["client"].get("/api/agents")
    assert_error(response, 401, "missing_token", "Authorization: Bearer")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("make, code, text", [
    (lambda j: "Bearer not.a.jwt", "malformed_token", "not a JWT"),
    (lambda j: "Token abc", "malformed_token", "Bearer TOKEN"),
    (lambda j: "Bearer " + j.token("alice", project=PROJECT, key=new_key()), "invalid_token", "signature"),
    (lambda j: "Bearer " + j.token("alice", project=PROJECT, expires_in=-120), "expired_token", "expired"),
    (lambda j: "Bearer " + j.token("alice", project=PROJECT, audience="other"), "invalid_token", "another Firebase"),
    (lambda j: "Bearer " + j.token("alice", project=PROJECT, issuer="https://evil.example"), "invalid_token",
     "not issued by"),
])
def test_bad_tokens_are_401(world, jwks, make, code, text):
    assert_error(world["client"].get("/api/agents", headers={"Authorization": make(jwks)}), 401, code, text)


def test_users_see_only_their_own_agents(world, jwks):
    client = world["client"]
    alice = client.get("/api/agents", headers=headers(jwks)).json()
    assert [a["name"] for a in alice["items"]] == ["alice-cross"] and alice["total"] == 1
    assert alice["items"][0]["owner"] == "alice" and alice["items"][0]["strategy"] == "SmaCross"
    assert client.get("/api/agents/alice-cross", headers=headers(jwks)).json()["symbols"] == ["AAPL", "MSFT"]
    assert_error(client.get("/api/agents/bob-cross", headers=headers(jwks)), 403, "forbidden", "another user")
    assert_error(client.get("/api/agents/nobody", headers=headers(jwks)), 404, "not_found")
    for path in ("/api/paper-trading/bob-cross", "/api/broker/bob-cross/account", "/api/paper-trading/bob-cross/logs"):
        assert_error(client.get(path, headers=headers(jwks)), 403)
    assert_error(client.post("/api/paper-trading/bob-cross/start", headers=headers(jwks)), 403)
    assert_error(client.delete("/api/agents/bob-cross", headers=headers(jwks)), 403)


def test_users_see_only_their_own_runs(world, jwks):
    client, runs = world["client"], world["runs"]
    listed = client.get("/api/fmel/runs", headers=headers(jwks)).json()
    assert sorted(r["run_id"] for r in listed["items"]) == sorted([runs["a1"], runs["a2"]])
    assert_error(client.get(f"/api/fmel/runs/{runs['b1']}", headers=headers(jwks)), 403)
    assert_error(client.get(f"/api/fmel/runs/{runs['b1']}/bars/3", headers=headers(jwks)), 403)
    assert_error(client.get("/api/fmel/compare", params={"run_a": runs["a1"], "run_b": runs["b1"]},
                            headers=headers(jwks)), 403)
    assert client.get(f"/api/fmel/runs/{runs['b1']}", headers=headers(jwks, "bob")).status_code == 200
    # Explanations of finished runs are cached; the cache answers only whoever may see the run.
    assert client.get(f"/api/fmel/runs/{runs['a1']}/bars/3", headers=headers(jwks)).status_code == 200
    assert client.get(f"/api/fmel/runs/{runs['a1']}/bars/3", headers=headers(jwks)).status_code == 200
    assert world["app"].state.farm.caches["explain"].hits >= 1
    assert_error(client.get(f"/api/fmel/runs/{runs['a1']}/bars/3", headers=headers(jwks, "bob")), 403)


def test_a_run_stays_its_owners_when_another_user_takes_the_agents_name(world, jwks):
    client, agents, settings = world["client"], world["agents"], world["settings"]
    first = add_agent(agents, "alpha", "alice")
    bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=1, freq="1min", seed=5)
    run_id = fk.backtest(TrackedCross, bars, agent_id="alpha",
                         settings=settings.replace(owner="alice", agent_uid=first.uid)).run_id
    assert client.delete("/api/agents/alpha", headers=headers(jwks)).status_code == 204
    second = add_agent(agents, "alpha", "bob")
    assert second.uid and first.uid and second.uid != first.uid
    assert add_agent(agents, "alpha", "bob").uid == second.uid        # its owner replacing it: the same agent
    assert_error(client.get(f"/api/fmel/runs/{run_id}", headers=headers(jwks, "bob")), 403)
    assert_error(client.get(f"/api/fmel/runs/{run_id}/bars/3", headers=headers(jwks, "bob")), 403)
    assert run_id not in {r["run_id"] for r in client.get("/api/fmel/runs", headers=headers(jwks, "bob")).json()["items"]}
    assert client.get(f"/api/fmel/runs/{run_id}", headers=headers(jwks)).status_code == 200
    assert run_id in {r["run_id"] for r in client.get("/api/fmel/runs", headers=headers(jwks)).json()["items"]}
    row = open_store(settings.store).runs.get(run_id)
    assert (row["owner"], row["agent_uid"]) == ("alice", first.uid)
    agents.delete("alpha")


def test_a_run_registered_without_an_owner_is_no_users(world, jwks):
    # It names alice's agent, but nothing says it is hers: only the operators (local token) see it.
    anon = world["runs"]["anon"]
    assert_error(world["client"].get(f"/api/fmel/runs/{anon}", headers=headers(jwks)), 403)


def test_requests_go_on_while_the_signing_keys_are_fetched(world):
    import threading
    from farmkit.api.auth import FirebaseAuth, SigningKeys
    with JwksServer() as slow:
        slow.answer.clear()     # Google takes its time answering
        app = create_app(world["settings"], world["api"], auth=FirebaseAuth(PROJECT, SigningKeys(slow.url)))
        with TestClient(app) as client:    # one event loop serves every request, as in uvicorn
            replies = []
            first = threading.Thread(target=lambda: replies.append(client.get("/api/agents", headers=headers(slow))))
            first.start()
            try:
                assert slow.asked.wait(30)
                # The first request waits for the keys; the others do not wait with it.
                assert client.get("/healthz").status_code == 200
                assert client.get("/api/agents").status_code == 401   # no token: refused at once
                assert not replies and first.is_alive()
            finally:
                slow.answer.set()
                first.join(30)
            assert replies[0].status_code == 200, replies[0].text
            assert [a["name"] for a in replies[0].json()["items"]] == ["alice-cross"]
            assert client.get("/api/agents", headers=headers(slow)).status_code == 200 and slow.requests == 1


def test_local_token_user_sees_everything(world):
    app = create_app(world["settings"], world["api"].replace(auth="local", token="local-secret"))
    client = TestClient(app)
    assert_error(client.get("/api/agents", headers={"Authorization": "Bearer wrong"}), 401, "invalid_token")
    body = client.get("/api/agents", headers={"Authorization": "Bearer local-secret"}).json()
    assert [a["name"] for a in body["items"]] == ["alice-cross", "bob-cross"]


# --- routes ------------------------------------------------------------------------------------------

def test_leaderboards_are_readable_by_every_user(world, jwks):
    from farmkit import leaderboard
    from farmkit.fmel.stores import open_store
    client = world["client"]
    # The world's backtests cover one day, too short for boards to rank them; two of them are given
    # a year's track record (as a backtest on a year of bars would have) so that there is a board.
    store, redis_client = open_store(world["settings"].store), leaderboard.connect(world["settings"])
    for run_id in (world["runs"]["a1"], world["runs"]["b1"]):
        row = store.runs.get(run_id)
        leaderboard.record_run(redis_client, {**row, "metrics": {**row["metrics"], "days": 252, "dsr": 0.5,
                                                                 "min_track_record_days": 30.0}})
    for uid in ("alice", "bob", "carol"):
        top = client.get("/api/leaderboard/backtest/top", params={"metric": "total_return", "limit": 10},
                         headers=headers(jwks, uid)).json()
        assert {e["agent"] for e in top["items"]} == {"alice-cross", "bob-cross"} and top["total"] == 2
        assert [e["rank"] for e in top["items"]] == [1, 2]
    assert client.get("/api/leaderboard", headers=headers(jwks, "carol")).json()["boards"] == ["backtest"]
    first = top["items"][0]["agent"]
    rank = client.get(f"/api/leaderboard/backtest/rank/{first}", params={"metric": "total_return"},
                      headers=headers(jwks, "carol")).json()
    assert rank["rank"] == 1
    assert client.get("/api/leaderboard/paper/rank/nobody", headers=headers(jwks)).json()["rank"] is None
    page = client.get("/api/leaderboard/backtest/top", params={"metric": "total_return", "limit": 1, "offset": 1},
                      headers=headers(jwks)).json()
    assert [e["rank"] for e in page["items"]] == [2] and page["next_offset"] is None
    assert_error(client.get("/api/leaderboard/backtest/top", params={"metric": "luck"}, headers=headers(jwks)), 422)


def test_decisions_explain_and_compare(world, jwks):
    client, runs = world["client"], world["runs"]
    buys = client.get(f"/api/fmel/runs/{runs['a1']}/decisions", params={"action": "buy", "limit": 3},
                      headers=headers(jwks)).json()
    assert buys["total"] >= 1 and all(d["action"] == "buy" for d in buys["items"]) and len(buys["items"]) <= 3
    reference = fk.fmel.decisions(runs["a1"], action="buy", store=fk.fmel.stores.open_store(world["settings"].store))
    assert buys["total"] == len(reference)
    bar = buys["items"][0]["bar_number"]
    explained = client.get(f"/api/fmel/runs/{runs['a1']}/bars/{bar}", headers=headers(jwks)).json()
    assert explained["bar_number"] == bar
    assert any(r["section"] == "decision" and r["field"].startswith("buy") for r in explained["rows"])
    # The run is now held whole; every other bar is a lookup, and reads as the store explains it.
    store = fk.fmel.stores.open_store(world["settings"].store)
    for other in (0, bar + 1, 389):
        answer = client.get(f"/api/fmel/runs/{runs['a1']}/bars/{other}", headers=headers(jwks)).json()
        table = fk.fmel.explain(runs["a1"], bar=other, store=store)
        assert [(r["section"], r["field"], r["value"]) for r in answer["rows"]] == \
            [(s, f, str(v)) for (s, f), v in table["value"].items()]
    assert runs["a1"] in world["app"].state.farm.records._runs
    assert_error(client.get(f"/api/fmel/runs/{runs['a1']}/bars/999999", headers=headers(jwks)), 404, "not_found",
                 "has no bar 999999")
    compared = client.get("/api/fmel/compare", params={"run_a": runs["a1"], "run_b": runs["a2"]},
                          headers=headers(jwks)).json()
    assert not compared["identical"] and compared["total_differences"] >= 1 and compared["bars"] == 390
    same = client.get("/api/fmel/compare", params={"run_a": runs["a1"], "run_b": runs["a1"]}, headers=headers(jwks))
    assert same.json()["identical"]


def test_sim_broker_reads_the_paper_sessions_checkpoint(world, jwks):
    client = world["client"]
    assert_error(client.get("/api/broker/alice-cross/account", headers=headers(jwks)), 404, "no_state",
                 "/api/paper-trading/alice-cross/start")
    state = world["settings"].home / "agents" / "alice-cross" / "state"
    checkpoint.save(checkpoint.Checkpoint(run_id="paper-1", agent_id="alice-cross", bars_written=10, cash=90_000.0,
                                          value=101_000.0, start_value=100_000.0, positions={"AAPL": [100, 110.0]},
                                          open_orders=[{"ref": 7, "symbol": "AAPL", "side": "sell", "size": 100,
                                                        "exectype": "limit", "price": 120.0,
                                                        "client_order_id": None}]), state)
    account = client.get("/api/broker/alice-cross/account", headers=headers(jwks)).json()
    assert (account["broker"], account["cash"], account["equity"], account["run_id"]) == ("sim", 90_000, 101_000,
                                                                                            "paper-1")
    positions = client.get("/api/broker/alice-cross/positions", headers=headers(jwks)).json()["items"]
    assert positions == [{"symbol": "AAPL", "qty": 100.0, "avg_price": 110.0, "market_value": None,
                          "unrealized_pl": None}]
    orders = client.get("/api/broker/alice-cross/orders", headers=headers(jwks)).json()["items"]
    assert [(o["side"], o["qty"], o["limit_price"], o["status"]) for o in orders] == [("sell", 100.0, 120.0, "open")]


def test_paper_status_before_any_start_and_a_stop_that_has_nothing_to_stop(world, jwks):
    client = world["client"]
    assert client.get("/api/paper-trading/alice-cross", headers=headers(jwks)).json()["state"] == "not_started"
    assert_error(client.post("/api/paper-trading/alice-cross/stop", headers=headers(jwks)), 409, "conflict",
                 "start it first")
    assert client.get("/api/paper-trading/alice-cross/logs", headers=headers(jwks)).json()["lines"] == []


def test_creating_an_agent_runs_the_promote_checks(world, jwks, tmp_path):
    client = world["client"]
    isolation = world["app"].state.checks.sandbox.isolation     # other users' uploads need the jail
    need(isolation["filesystem"], f"this machine cannot jail a check: {isolation['not_applied'].get('filesystem')}")
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("days = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(TINY_STRATEGY.replace("REASON", "'five bars in'"))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    body = {"name": "alice-tiny", "notebook": json.loads(nbformat.writes(nb))}
    # A day of random bars is luck: refused by the overfitting gate unless overridden.
    refused = create_agent(client, body, headers(jwks))
    assert refused[0].status_code == 202 and refused[0].json()["state"] in ("queued", "running"), refused[0].text
    assert refused[-1].json()["state"] == "failed" and "farm promote --allow-overfit" in refused[-1].json()["error"]
    body["allow_overfit"] = True
    created = create_agent(client, body, headers(jwks))
    check = created[-1].json()
    assert created[-1].status_code == 200 and check["state"] == "passed", check
    agent = check["agent"]
    assert (agent["owner"], agent["strategy"], agent["manifest"]["verification"]["bars"]) == ("alice", "Tiny", 390)
    assert agent["manifest"]["overfitting"]["overridden"] is True
    assert (world["agents"].root / "alice-tiny" / "agent.ipynb").exists()
    assert client.get("/api/agents/alice-tiny", headers=headers(jwks)).json()["manifest"] == agent["manifest"]
    # A check is its uploader's alone.
    url = created[0].headers["location"]
    assert_error(client.get(url, headers=headers(jwks, "bob")), 403, "forbidden", "another user")
    assert_error(client.get("/api/agents/checks/" + "0" * 32, headers=headers(jwks)), 404, "not_found")
    assert_error(client.post("/api/agents", json=body, headers=headers(jwks)), 409, "exists", "force=true")
    assert_error(client.post("/api/agents", json={**body, "force": True}, headers=headers(jwks, "bob")), 403)
    assert_error(client.get("/api/agents/alice-tiny", headers=headers(jwks, "bob")), 403)
    assert client.delete("/api/agents/alice-tiny", headers=headers(jwks)).status_code == 204
    assert_error(client.get("/api/agents/alice-tiny", headers=headers(jwks)), 404)


def test_a_notebook_that_cannot_be_promoted_is_422_with_the_reason(world, jwks):
    client = world["client"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    refused = client.post("/api/agents", json={"name": "no-params", "notebook": json.loads(nbformat.writes(nb))},
                          headers=headers(jwks))
    assert_error(refused, 422, "promotion_failed", "parameters")
    assert_error(client.post("/api/agents", json={"name": "junk", "notebook": {"cells": 3}}, headers=headers(jwks)),
                 422, "invalid_notebook")
    assert_error(client.post("/api/agents", json={"name": "Not Valid", "notebook": {}}, headers=headers(jwks)),
                 422, "invalid_request", "name")


def test_validation_and_unknown_routes_answer_json(world, jwks):
    client = world["client"]
    assert_error(client.get("/api/agents", params={"limit": 0}, headers=headers(jwks)), 422, "invalid_request",
                 "limit")
    assert_error(client.get("/api/nothing-here", headers=headers(jwks)), 404, "not_found", "/docs")


# --- limits, health, metrics ------------------------------------------------------------------------------

def test_rate_limit_is_a_redis_token_bucket_per_user(world, jwks, redis_server):  # noqa: F811
    app = create_app(world["settings"], world["api"].replace(rate=0.5, burst=3))
    client = TestClient(app)
    codes = [client.get("/api/leaderboard", headers=headers(jwks, "greedy")).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    limited = client.get("/api/leaderboard", headers=headers(jwks, "greedy"))
    body = assert_error(limited, 429, "rate_limited", "retry after")
    assert 1 <= int(limited.headers["retry-after"]) <= 2, body
    assert client.get("/api/leaderboard", headers=headers(jwks, "patient")).status_code == 200   # per user
    bucket = redis.Redis.from_url(redis_server.url).hgetall("farm:api:rl:greedy")
    assert float(bucket[b"t"]) < 1 and redis.Redis.from_url(redis_server.url).pttl("farm:api:rl:greedy") > 0


def test_rate_limits_are_shared_by_api_replicas(world, jwks):
    # Two apps on one Redis, as two pods behind a load balancer.
    one, two = (TestClient(create_app(world["settings"], world["api"].replace(rate=0.5, burst=2))) for _ in "12")
    h = headers(jwks, "replicated")
    assert [one.get("/api/leaderboard", headers=h).status_code, two.get("/api/leaderboard", headers=h).status_code,
            one.get("/api/leaderboard", headers=h).status_code] == [200, 200, 429]


def test_request_bodies_over_the_limit_are_413(world, jwks):
    client = TestClient(create_app(world["settings"], world["api"].replace(max_body=1000)))
    big = {"name": "big", "notebook": {"cells": [], "padding": "x" * 2000}}
    assert_error(client.post("/api/agents", json=big, headers=headers(jwks)), 413, "body_too_large", "FARM_API_MAX_BODY")

    def chunks():   # no Content-Length: chunked transfer
        yield b'{"name": "big", "notebook": {"padding": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}}'
    assert_error(client.post("/api/agents", content=chunks(), headers={**headers(jwks), "Content-Type": "application/json"}),
                 413, "body_too_large")


def test_health_and_readiness(world):
    client = world["client"]
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"store": "ok", "redis": "ok"}
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    unready = TestClient(create_app(world["settings"], world["api"], redis=dead)).get("/readyz")
    assert unready.status_code == 503 and unready.json()["checks"]["redis"].startswith("ConnectionError")


def test_metrics_count_requests_latency_and_errors_by_route(world, jwks):
    client = TestClient(create_app(world["settings"], world["api"]))
    client.get("/api/agents", headers=headers(jwks))
    client.get("/api/agents/bob-cross", headers=headers(jwks))
    client.get("/api/agents/bob-cross", headers=headers(jwks))
    client.get("/api/agents")
    text = client.get("/metrics").text
    assert 'farm_api_requests_total{method="GET",route="/api/agents",status="200"} 1.0' in text
    assert 'farm_api_errors_total{method="GET",route="/api/agents/{name}",status="403"} 2.0' in text
    assert 'farm_api_errors_total{method="GET",route="/api/agents",status="401"} 1.0' in text
    assert 'farm_api_request_seconds_count{method="GET",route="/api/agents/{name}"} 2.0' in text


def test_an_unexpected_failure_is_a_json_500_with_an_incident_id(world, jwks):
    class Broken:
        def get(self, name):
            raise RuntimeError("disk on fire")

        def list(self):
            raise RuntimeError("disk on fire")
    client = TestClient(create_app(world["settings"], world["api"], agents=Broken()))
    assert_error(client.get("/api/agents", headers=headers(jwks)), 500, "internal_error", "incident")


def test_openapi_and_docs_are_published(world):
    client = world["client"]
    schema = client.get("/openapi.json").json()
    assert {"/api/agents", "/api/paper-trading/{name}/start", "/api/broker/{name}/orders",
            "/api/leaderboard/{board}/top", "/api/fmel/runs/{run_id}/bars/{bar}", "/readyz"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
