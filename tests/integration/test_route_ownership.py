"""Every route of the REST API, asked by one user about another user's agent or run: never a 2xx, never
a byte of the other user's data. The table below names a request for each route; a route added without
one fails `test_every_route_is_probed`, so no new route escapes the probe."""

import pytest

from tests.integration.test_api import headers, jwks, world  # noqa: F401  (fixtures)
from tests.redis_server import redis_server  # noqa: F401  (the session fixture)

# Each route: the request alice makes about bob's things ({run} is bob's run, {agent} his agent).
PROBES = {
    ("GET", "/api/agents"): ("GET", "/api/agents", None),
    ("GET", "/api/agents/{name}"): ("GET", "/api/agents/{agent}", None),
    ("POST", "/api/agents"): ("POST", "/api/agents", "create"),
    ("DELETE", "/api/agents/{name}"): ("DELETE", "/api/agents/{agent}", None),
    ("POST", "/api/paper-trading/{name}/start"): ("POST", "/api/paper-trading/{agent}/start", None),
    ("POST", "/api/paper-trading/{name}/stop"): ("POST", "/api/paper-trading/{agent}/stop", None),
    ("GET", "/api/paper-trading/{name}"): ("GET", "/api/paper-trading/{agent}", None),
    ("GET", "/api/paper-trading/{name}/logs"): ("GET", "/api/paper-trading/{agent}/logs", None),
    ("GET", "/api/broker/{name}/account"): ("GET", "/api/broker/{agent}/account", None),
    ("GET", "/api/broker/{name}/positions"): ("GET", "/api/broker/{agent}/positions", None),
    ("GET", "/api/broker/{name}/orders"): ("GET", "/api/broker/{agent}/orders", None),
    ("GET", "/api/fmel/runs"): ("GET", "/api/fmel/runs", None),
    ("GET", "/api/fmel/runs/{run_id}"): ("GET", "/api/fmel/runs/{run}", None),
    ("GET", "/api/fmel/runs/{run_id}/decisions"): ("GET", "/api/fmel/runs/{run}/decisions", None),
    ("GET", "/api/fmel/runs/{run_id}/bars/{bar}"): ("GET", "/api/fmel/runs/{run}/bars/3", None),
    ("GET", "/api/fmel/runs/{run_id}/bars/{bar}/why-not"): ("GET", "/api/fmel/runs/{run}/bars/3/why-not", None),
    ("GET", "/api/fmel/compare"): ("GET", "/api/fmel/compare?run_a={mine}&run_b={run}", None),
}
# Public to every signed-in user by design (a leaderboard ranks everyone's agents).
SHARED = {("GET", "/api/leaderboard"), ("GET", "/api/leaderboard/{board}/top"),
          ("GET", "/api/leaderboard/{board}/rank/{agent}"), ("GET", "/api/leaderboard/{board}/too-short")}
# Ownership of these is tested where their resource is created (the upload's check).
ELSEWHERE = {("GET", "/api/agents/checks/{check_id}")}


def api_routes(app) -> set[tuple[str, str]]:
    # From the OpenAPI document: every route the app serves, however its routers are included.
    return {(method.upper(), path) for path, methods in app.openapi()["paths"].items()
            if path.startswith("/api/") for method in methods}


def test_every_route_is_probed(world):
    missing = api_routes(world["app"]) - set(PROBES) - SHARED - ELSEWHERE
    assert not missing, f"routes without an ownership probe: {sorted(missing)}"


@pytest.mark.parametrize("route", sorted(PROBES), ids=lambda r: f"{r[0]} {r[1]}")
def test_another_users_things_are_out_of_reach(world, jwks, route):  # noqa: F811
    if route not in api_routes(world["app"]):
        pytest.fail(f"{route} is probed but the app has no such route")
    method, path, body = PROBES[route]
    bob_run, alice_run = world["runs"]["b1"], world["runs"]["a1"]
    url = path.format(agent="bob-cross", run=bob_run, mine=alice_run)
    payload = None
    if body == "create":    # taking over bob's agent by uploading under its name
        payload = {"name": "bob-cross", "notebook": {"cells": [], "metadata": {}, "nbformat": 4,
                                                      "nbformat_minor": 5}, "force": True}
    response = world["client"].request(method, url, headers=headers(jwks, "alice"), json=payload)
    if url in ("/api/agents", "/api/fmel/runs") and method == "GET":
        assert response.status_code == 200
        listed = response.text
    else:
        assert response.status_code in (403, 404), (url, response.status_code, response.text)
        listed = response.text
    assert bob_run not in listed.replace(f"run {bob_run!r} is another user's", "")
    assert '"bob"' not in listed and "bob-cross" not in listed.replace("agent 'bob-cross' belongs to another user", "")
    # and bob's things are all still there, as they were
    assert world["agents"].get("bob-cross").owner == "bob"
    assert world["client"].get(f"/api/fmel/runs/{bob_run}", headers=headers(jwks, "bob")).status_code == 200
