"""Property-based fuzzing of every operation in the API's published OpenAPI schema (schemathesis):
no input gives a 5xx, and every response has a documented status, content type and body schema.
The app is the real one (embedded store with a real backtest's FMEL, a real redis-server, agents in a
folder, the local-process orchestrator); examples per operation are few to keep the file quick."""

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

import farmkit as fk
from farmkit.ops.agents import LocalAgentStore
from farmkit.api import ApiSettings, create_app
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)
from tests.redis_server import redis_server  # noqa: F401  (the session fixture)
from tests.unit.test_engine import TrackedCross

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer fuzz-token"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, redis_server):  # noqa: F811
    home = tmp_path_factory.mktemp("fuzz")
    settings = fk.Settings.from_env({"FARM_HOME": str(home / "farm"), "FARM_REDIS": redis_server.url,
                                     "FARM_PROGRESS": "off"})
    agents = LocalAgentStore(home / "agents")
    agents.put("sma-crossover", ROOT / "agents" / "sma-crossover", owner="local")
    bars = fk.data.synthetic(["AAPL"], start="2024-01-02", days=1, freq="1min", seed=3)
    fk.backtest(TrackedCross, bars, agent_id="sma-crossover", settings=settings)
    app = create_app(settings, ApiSettings(token="fuzz-token", agents=str(agents.root), rate=100_000, burst=100_000))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.app_under_test = app
    return schema


def test_no_5xx_and_every_response_matches_the_schema(api_schema):
    # schemathesis's pytest plugin does not run under this pytest, so each operation's Hypothesis
    # strategy is driven here; every operation is fuzzed and all failures are reported together.
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures, operations = {}, 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def fuzz(case):
            case.call_and_validate(headers=AUTH, checks=checks)

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    assert operations == len(api_schema.raw_schema and [1 for p in api_schema.raw_schema["paths"].values()
                                                          for m in p if m in ("get", "post", "delete")])
    statuses = {}
    for metric in api_schema.app_under_test.state.registry.collect():
        for sample in metric.samples:
            if sample.name == "farm_api_requests_total":
                statuses[sample.labels["status"]] = statuses.get(sample.labels["status"], 0) + sample.value
    assert sum(statuses.values()) >= 3 * operations, statuses      # the fuzzing did call the app
    assert statuses.get("200", 0) > 0 and statuses.get("422", 0) > 0, statuses
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
