"""Paper sessions through the API. Locally: a real runner process (``python -m runner``) on
agents/sma-crossover paper-trading a replayed market on the in-process bus, started and stopped over
HTTP. On Kubernetes: no cluster can run here, so the official ``kubernetes`` client talks to a recorded
in-memory API server (its REST layer replaced; the client's own request building and response parsing
run) and the objects it is sent are checked with kubernetes-validate --strict."""

import copy
import json
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

import farmkit as fk
from farmkit.ops.agents import LocalAgentStore
from farmkit.api import ApiSettings, create_app
from farmkit.fmel.stores import open_store
from farmkit.ops.orchestrators import OWNER_ANNOTATION, KubernetesOrchestrator, LocalProcessOrchestrator, OrchestratorError
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agents" / "sma-crossover"
AUTH = {"Authorization": "Bearer t"}


def eventually(condition, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)     # a poll interval
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def local(tmp_path):
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off", "FARM_BUS": "memory://",
                                     "FARM_REPLAY": "synthetic", "FARM_REPLAY_SPEED": "600"})
    agents = LocalAgentStore(tmp_path / "agents")
    agents.put("sma-crossover", AGENT, owner="local")
    orchestrator = LocalProcessOrchestrator(settings, agents, grace=15)
    client = TestClient(create_app(settings, ApiSettings(token="t"), agents=agents, orchestrator=orchestrator))
    yield settings, orchestrator, client
    if orchestrator.status("sma-crossover")["state"] in ("starting", "running", "stopping"):
        orchestrator.stop("sma-crossover")
        orchestrator.wait("sma-crossover", 60)


def test_a_runner_process_is_started_and_stopped_over_http(local):
    settings, orchestrator, client = local
    started = client.post("/api/paper-trading/sma-crossover/start", headers=AUTH)
    assert started.status_code == 202, started.text
    assert started.json()["state"] in ("starting", "running") and started.json()["owner"] == "local"
    assert client.post("/api/paper-trading/sma-crossover/start", headers=AUTH).status_code == 409

    def decided():
        status = client.get("/api/paper-trading/sma-crossover", headers=AUTH).json()
        assert status["state"] in ("starting", "running"), (status, orchestrator.logs("sma-crossover", 40))
        return status if status["state"] == "running" and status["paper"].get("fmel_committed", 0) > 0 else None
    status = eventually(decided, what="the paper session to commit FMEL")
    run_id = status["run_id"]
    assert run_id and status["paper"]["agent_id"] == "sma-crossover"
    assert client.get("/api/fmel/runs", params={"mode": "paper"}, headers=AUTH).json()["items"][0]["run_id"] == run_id
    account = client.get("/api/broker/sma-crossover/account", headers=AUTH)
    assert account.status_code in (200, 404)    # 200 once the first checkpoint is saved

    stopping = client.post("/api/paper-trading/sma-crossover/stop", headers=AUTH)
    assert stopping.status_code == 202 and stopping.json()["state"] in ("stopping", "stopped")
    assert orchestrator.wait("sma-crossover", 60) == 0, orchestrator.logs("sma-crossover", 60)
    final = client.get("/api/paper-trading/sma-crossover", headers=AUTH).json()
    assert (final["state"], final["exit_code"], final["paper"]["state"]) == ("stopped", 0, "stopped")
    logs = client.get("/api/paper-trading/sma-crossover/logs", params={"lines": 500}, headers=AUTH).json()["lines"]
    assert any("runner for sma-crossover" in line for line in logs)
    records = open_store(settings.store).fmel(run_id)
    assert len(records) == final["paper"]["fmel_committed"] > 0
    assert client.get("/api/broker/sma-crossover/account", headers=AUTH).json()["run_id"] == run_id
    assert client.post("/api/paper-trading/sma-crossover/stop", headers=AUTH).status_code == 409
    assert client.delete("/api/agents/sma-crossover", headers=AUTH).status_code == 204


def test_an_agent_that_is_paper_trading_cannot_be_deleted(local):
    _, orchestrator, client = local
    orchestrator.start("sma-crossover", owner="local")
    refused = client.delete("/api/agents/sma-crossover", headers=AUTH)
    assert refused.status_code == 409 and "stop" in refused.json()["message"]


def test_a_runner_that_fails_is_reported_failed(tmp_path):
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off"})
    agents = LocalAgentStore(tmp_path / "agents")
    agents.put("sma-crossover", AGENT, owner="local")
    (agents.root / "sma-crossover" / "agent.ipynb").unlink()      # the runner refuses to start without it
    orchestrator = LocalProcessOrchestrator(settings, agents)
    orchestrator.start("sma-crossover", owner="u1")
    assert orchestrator.wait("sma-crossover", 60) not in (0, None)
    status = orchestrator.status("sma-crossover")
    assert status["state"] == "failed" and status["owner"] == "u1"
    assert any("agent.ipynb" in line for line in orchestrator.logs("sma-crossover"))
    with pytest.raises(OrchestratorError, match="not paper-trading"):
        orchestrator.stop("sma-crossover")


# --- Kubernetes --------------------------------------------------------------------------------------

class _Reply:
    def __init__(self, status, data, content_type="application/json"):
        self.status, self.reason = status, {200: "OK", 201: "Created", 404: "Not Found", 409: "Conflict"}[status]
        self.data = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.headers = {"content-type": content_type}


class RecordedKubernetesApi:
    """An in-memory Kubernetes API server at the REST layer of the official client: it keeps objects by
    path, answers create/read/replace/patch/delete/log as the real one does (201/200/404/409), and
    records every request."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.logs: dict[str, str] = {}
        self.calls: list[tuple[str, str, dict, object]] = []
        self.on_create: dict[str, object] = {}     # resource -> what happens in the cluster when one is created

    def request(self, method, url, headers=None, body=None, post_params=None, _request_timeout=None):
        from kubernetes.client.rest import RESTResponse
        parsed = urlparse(url)
        path, query = parsed.path, parse_qs(parsed.query)
        self.calls.append((method, path, query, copy.deepcopy(body)))
        return RESTResponse(self._answer(method, path, query, body))

    def _answer(self, method, path, query, body):
        status_404 = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        if method == "POST":
            key = f"{path}/{body['metadata']['name']}"
            if key in self.objects:
                return _Reply(409, {**status_404, "reason": "AlreadyExists", "code": 409})
            obj = copy.deepcopy(body)
            obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp="2026-01-02T03:04:05Z")
            self.objects[key] = obj
            if path.rsplit("/", 1)[1] in self.on_create:
                self.on_create[path.rsplit("/", 1)[1]](obj)
            return _Reply(201, obj)
        if method == "GET" and path.endswith("/log"):
            text = self.logs.get(path[:-len("/log")])
            return _Reply(200, text.encode(), "text/plain") if text is not None else _Reply(404, status_404)
        if method == "GET" and path.rsplit("/", 1)[1] in ("pods", "jobs", "configmaps"):     # a list
            wanted = dict(pair.split("=", 1) for pair in query.get("labelSelector", [""])[0].split(",") if pair)
            items = [o for key, o in self.objects.items() if key.rsplit("/", 1)[0] == path
                     and wanted.items() <= (o["metadata"].get("labels") or {}).items()]
            return _Reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        if path not in self.objects:
            return _Reply(404, status_404)
        if method == "GET":
            return _Reply(200, self.objects[path])
        if method in ("PUT", "PATCH"):
            self.objects[path] = copy.deepcopy(body)
            return _Reply(200, self.objects[path])
        if method == "DELETE":
            gone = self.objects.pop(path)
            # As the API declares it: services answer with the deleted object, the others with a Status.
            return _Reply(200, gone if "/services/" in path else {"kind": "Status", "apiVersion": "v1",
                                                                   "status": "Success"})
        raise AssertionError(f"unexpected {method} {path}")


@pytest.fixture
def cluster(tmp_path):
    from kubernetes import client
    api = RecordedKubernetesApi()
    api_client = client.ApiClient(client.Configuration(host="https://kubernetes.invalid"))
    api_client.rest_client = api
    agents = LocalAgentStore(tmp_path / "agents")
    agents.put("sma-crossover", AGENT, owner="alice")
    orchestrator = KubernetesOrchestrator(agents, "farm", apps=client.AppsV1Api(api_client),
                                          core=client.CoreV1Api(api_client))
    return api, orchestrator


STS = "/apis/apps/v1/namespaces/farm/statefulsets/sma-crossover"


def test_kubernetes_start_creates_the_rendered_objects_which_validate_strictly(cluster):
    try:
        import kubernetes_validate
    except ImportError:
        need(False, "kubernetes-validate is not installed (pip install -e '.[test]')")
    api, orchestrator = cluster
    status = orchestrator.start("sma-crossover", owner="alice")
    assert (status["state"], status["owner"]) == ("starting", "alice")
    created = [(path, body) for method, path, _, body in api.calls if method == "POST"]
    assert [p for p, _ in created] == ["/api/v1/namespaces/farm/configmaps", "/api/v1/namespaces/farm/services",
                                       "/apis/apps/v1/namespaces/farm/statefulsets"]
    for _, body in created:
        kubernetes_validate.validate(body, "1.32.0", strict=True)
    sts = created[-1][1]
    assert sts["metadata"]["annotations"][OWNER_ANNOTATION] == "alice"
    assert sts["metadata"]["name"] == "sma-crossover" and sts["metadata"]["namespace"] == "farm"
    assert orchestrator.owner("sma-crossover") == "alice"
    with pytest.raises(OrchestratorError, match="already paper-trading"):
        orchestrator.start("sma-crossover", owner="alice")

    api.objects[STS]["status"] = {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    assert orchestrator.status("sma-crossover")["state"] == "running"
    api.logs["/api/v1/namespaces/farm/pods/sma-crossover-0"] = "one\ntwo\nthree\n"
    assert orchestrator.logs("sma-crossover", 2) == ["two", "three"]
    log_call = api.calls[-1]
    assert log_call[1].endswith("/pods/sma-crossover-0/log") and log_call[2]["tailLines"] == ["2"]

    api.calls.clear()
    assert orchestrator.stop("sma-crossover")["state"] == "stopping"
    deletes = [(path, query) for method, path, query, _ in api.calls if method == "DELETE"]
    assert deletes[0] == (STS, {"propagationPolicy": ["Foreground"]})
    assert sorted(p for p, _ in deletes[1:]) == ["/api/v1/namespaces/farm/configmaps/sma-crossover",
                                                 "/api/v1/namespaces/farm/services/sma-crossover"]
    assert orchestrator.status("sma-crossover")["state"] == "not_started"
    with pytest.raises(OrchestratorError, match="not paper-trading"):
        orchestrator.stop("sma-crossover")


def test_kubernetes_start_replaces_objects_left_from_an_earlier_run(cluster):
    api, orchestrator = cluster
    orchestrator.start("sma-crossover", owner="alice")
    del api.objects[STS]                          # the StatefulSet was deleted, its ConfigMap and Service stayed
    api.calls.clear()
    orchestrator.start("sma-crossover", owner="alice")
    assert [m for m, *_ in api.calls if m != "GET"] == ["POST", "PUT", "POST", "PATCH", "POST"]


def test_kubernetes_orchestrator_through_the_api(cluster, tmp_path):
    api, orchestrator = cluster
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off"})
    client = TestClient(create_app(settings, ApiSettings(token="t"), agents=orchestrator.agents,
                                   orchestrator=orchestrator))
    assert client.post("/api/paper-trading/sma-crossover/start", headers=AUTH).json()["state"] == "starting"
    assert client.get("/api/paper-trading/sma-crossover/logs", headers=AUTH).json()["lines"] == []   # no pod yet
    assert client.post("/api/paper-trading/sma-crossover/stop", headers=AUTH).status_code == 202


def test_farm_api_runner_image_is_the_image_of_the_agents_pods(cluster, tmp_path, monkeypatch):
    from kubernetes import config

    from farmkit.ops.orchestrators import open_orchestrator

    api, recorded = cluster
    # No cluster here: the default clients are made from an empty configuration, then swapped for the
    # recorded API server's (they make no request before start()).
    monkeypatch.setattr(config, "load_incluster_config", lambda: (_ for _ in ()).throw(config.ConfigException()))
    monkeypatch.setattr(config, "load_kube_config", lambda: None)
    image = "us-central1-docker.pkg.dev/p/farm/runner:9.9.9"
    api_settings = ApiSettings.from_env({"FARM_API_ORCHESTRATOR": "kubernetes://farm", "FARM_API_RUNNER_IMAGE": image})
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off"})
    orchestrator = open_orchestrator(api_settings.orchestrator, settings, recorded.agents,
                                     runner_image=api_settings.runner_image)
    orchestrator.apps, orchestrator.core = recorded.apps, recorded.core
    orchestrator.start("sma-crossover", owner="alice")
    sts = api.objects[STS]
    assert {c["image"] for c in sts["spec"]["template"]["spec"]["containers"]} == {image}


# --- the sandbox of uploaded notebooks, on Kubernetes -------------------------------------------------------

def _sandbox(api, **kwargs):
    from kubernetes import client

    from farmkit.ops.orchestrators import KubernetesSandbox
    api_client = client.ApiClient(client.Configuration(host="https://kubernetes.invalid"))
    api_client.rest_client = api
    return KubernetesSandbox("farm-sandbox", image="registry.example/runner:1", batch=client.BatchV1Api(api_client),
                             core=client.CoreV1Api(api_client), poll=0.01, **kwargs)


def _runs(api, *, status: dict, log: str | None):
    """When a Job is created, it has run: its status is ``status``, its pod's log ``log``."""
    def run(job):
        meta = job["metadata"]
        pod = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}-x7k2p"
        api.objects[pod] = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{meta['name']}-x7k2p", "namespace": meta["namespace"],
            "labels": job["spec"]["template"]["metadata"]["labels"]}}
        if log is not None:
            api.logs[pod] = log
        api.objects[f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}"]["status"] = status
    api.on_create["jobs"] = run


def test_a_check_on_kubernetes_is_a_sandbox_job_whose_log_brings_the_agent_back(tmp_path):
    import base64
    import gzip

    from farmkit.ops.orchestrators import CHECK_LABEL, SANDBOX_RESULT
    from tests.integration.test_api import create_agent
    api = RecordedKubernetesApi()
    files = {f: base64.b64encode(gzip.compress((AGENT / f).read_bytes())).decode()
             for f in ("agent.ipynb", "agent.yaml", "requirements.lock")}
    # What the worker prints, after whatever the notebook printed (a forged outcome would come earlier).
    _runs(api, status={"succeeded": 1}, log=f"{SANDBOX_RESULT}{{\"passed\": false}}\nnoise\n"
                                            f"{SANDBOX_RESULT}{json.dumps({'passed': True, 'files': files})}\n")
    sandbox = _sandbox(api)
    settings = fk.Settings.from_env({"FARM_HOME": str(tmp_path / "farm"), "FARM_REDIS": "off"})
    agents = LocalAgentStore(tmp_path / "agents")
    app = create_app(settings, ApiSettings(token="t"), agents=agents, sandbox=sandbox)
    notebook = json.loads((AGENT / "agent.ipynb").read_text())
    answers = create_agent(TestClient(app), {"name": "sma-crossover", "notebook": notebook}, AUTH)
    check = answers[-1].json()
    assert check["state"] == "passed", check
    assert check["sandbox"]["kind"] == "kubernetes" and check["sandbox"]["runtime_class"] == "gvisor"
    assert agents.get("sma-crossover").owner == "local" and check["agent"]["strategy"] == "SmaCross"
    assert (agents.root / "sma-crossover" / "agent.ipynb").read_bytes() == (AGENT / "agent.ipynb").read_bytes()
    created = [(path, body) for method, path, _, body in api.calls if method == "POST"]
    assert [p for p, _ in created] == ["/api/v1/namespaces/farm-sandbox/configmaps",
                                       "/apis/batch/v1/namespaces/farm-sandbox/jobs"]
    job = created[1][1]
    assert job["spec"]["template"]["spec"]["runtimeClassName"] == "gvisor"
    assert job["metadata"]["labels"][CHECK_LABEL] == check["id"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/runner:1"
    listed = [q for method, path, q, _ in api.calls if method == "GET" and path.endswith("/pods")]
    assert listed == [{"labelSelector": [f"{CHECK_LABEL}={check['id']}"]}]
    deleted = sorted(path for method, path, _, _ in api.calls if method == "DELETE")
    assert deleted == [f"/api/v1/namespaces/farm-sandbox/configmaps/{job['metadata']['name']}",
                       f"/apis/batch/v1/namespaces/farm-sandbox/jobs/{job['metadata']['name']}"]
    try:
        import kubernetes_validate
    except ImportError:
        return
    for _, body in created:
        kubernetes_validate.validate(body, "1.32.0", strict=True)


def test_a_sandbox_job_past_its_deadline_is_a_timed_out_check():
    api = RecordedKubernetesApi()
    _runs(api, status={"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]},
          log="still looping\n")
    run = _sandbox(api, timeout=30).check("ab" * 16, b"{}", name="forever", allow_overfit=False)
    assert run.timed_out and run.result is None and run.output == "still looping"
    assert not [p for p in api.objects if "/jobs/" in p or "/configmaps/" in p]     # cleaned up
