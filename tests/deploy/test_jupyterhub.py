"""jupyterhub/: the Zero-to-JupyterHub values (helm cannot render them here: loaded and checked), and
the local hub run for real: started from jupyterhub_config.py, a user's server spawned through the
hub's REST API, and a farmkit notebook executed in that server's kernel."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest
import yaml

from farmkit.settings import Settings
from tests.conftest import need
from tests.deploy.manifests import ROOT
from tests.local_process import LocalProcess, free_port

HUB = ROOT / "jupyterhub"
TOKEN = uuid.uuid4().hex
NOTEBOOK = "notebooks/strategies/sma_crossover.ipynb"


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HUB / "values.yaml").read_text())


def test_values_single_user_image_profiles_culling_storage(values):
    single = values["singleuser"]
    assert single["image"]["name"].endswith("/farm/singleuser") and single["image"]["tag"] == "0.1.0"
    dockerfile = (ROOT / "docker/singleuser.Dockerfile").read_text()
    assert f"USER {single['uid']}" in dockerfile and "COPY notebooks /opt/farm/notebooks" in dockerfile
    assert "/opt/farm/notebooks" in " ".join(single["lifecycleHooks"]["postStart"]["exec"]["command"])
    profiles = {p["slug"]: p["kubespawner_override"] for p in single["profileList"]}
    assert set(profiles) == {"small", "large"}
    assert profiles["small"]["cpu_limit"] < profiles["large"]["cpu_limit"]
    assert [p["slug"] for p in single["profileList"] if p.get("default")] == ["small"]
    assert values["cull"]["enabled"] is True and 0 < values["cull"]["timeout"] <= 86400
    assert values["cull"]["users"] is False
    assert single["storage"]["type"] == "dynamic" and single["storage"]["homeMountPath"] == "/home/jovyan"


def test_values_point_farmkit_at_the_cloud_backends(values):
    env = values["singleuser"]["extraEnv"]
    settings = Settings.from_env(env)        # unknown FARM_* keys would be an error here too
    assert settings.store.startswith("bigquery://") and settings.bus.startswith("pubsub://")
    # Memorystore with TLS on 6378, its auth string and CA named as Secret Manager secrets
    assert settings.redis.startswith("rediss://") and "auth_secret=" in settings.redis
    redis_host = re.match(r"rediss://([\d.]+):6378/", settings.redis).group(1)
    import ipaddress
    assert ipaddress.ip_address(redis_host) in ipaddress.ip_network("10.30.0.0/29")
    # the service account it runs as is one terraform binds to farm-workloads
    main_tf = (ROOT / "terraform/main.tf").read_text()
    assert f'"{values["singleuser"]["serviceAccountName"]}"' in main_tf


class LocalHub(LocalProcess):
    name = "jupyterhub"
    ready_timeout = 60.0

    def __init__(self, state: Path):
        super().__init__()
        self.state = state
        self.api_port, self.hub_port = free_port(), free_port()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jupyterhub", "-f", str(HUB / "jupyterhub_config.py"), "--ip", "127.0.0.1",
                "--port", str(self.port), f"--JupyterHub.hub_port={self.hub_port}",
                f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{self.api_port}"]

    def ready(self) -> bool:
        return self.request("GET", "/hub/api/")[0] == 200

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read()
                return resp.status, json.loads(text) if text else {}
        except urllib.error.HTTPError as exc:
            return exc.code, {"error": exc.read().decode(errors="replace")}


def proxy_binary() -> str | None:
    local = HUB / "node_modules/.bin/configurable-http-proxy"
    return str(local) if local.exists() else shutil.which("configurable-http-proxy")


async def execute(hub: LocalHub, user: str, kernel_id: str, code: str, timeout: float = 180.0) -> list[dict]:
    """Run code in the kernel over its websocket (Jupyter messaging, JSON form); return its iopub
    outputs, failing on an error reply."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"}))
    msg_id, outputs, reply, idle = uuid.uuid4().hex, [], None, False
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    deadline = time.monotonic() + timeout
    try:
        while reply is None or not idle:
            message = await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert message is not None, "the kernel's websocket closed"
            msg = json.loads(message)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if msg["channel"] == "shell" and kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif kind in ("stream", "execute_result", "display_data", "error"):
                outputs.append(msg["content"] | {"kind": kind})
    finally:
        ws.close()
    assert reply["status"] == "ok", f"{reply.get('ename')}: {reply.get('evalue')}\n{code}"
    return outputs


def test_local_hub_spawns_a_server_that_runs_a_farmkit_notebook(tmp_path, monkeypatch):
    need(importlib.util.find_spec("jupyterhub") is not None, "jupyterhub is not installed (pip install -e '.[test]')")
    need(importlib.util.find_spec("jupyterlab") is not None, "jupyterlab is not installed (pip install -e '.[test]')")
    need(proxy_binary() is not None, "configurable-http-proxy is not installed (bin/test: npm ci --prefix jupyterhub)")
    for key in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HUB_STATE_DIR", str(tmp_path / "hub"))
    monkeypatch.setenv("HUB_SERVICE_TOKEN", TOKEN)
    monkeypatch.setenv("FARM_REDIS", "off")      # passed on to the user's kernel (env_keep)
    monkeypatch.delenv("HUB_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)
    user = "quant"
    with LocalHub(tmp_path / "hub") as hub:
        try:
            assert hub.request("POST", f"/hub/api/users/{user}")[0] == 201
            status, body = hub.request("POST", f"/hub/api/users/{user}/server")
            assert status in (201, 202), body
            deadline = time.monotonic() + 60
            while not hub.request("GET", f"/hub/api/users/{user}")[1].get("servers", {}).get("", {}).get("ready"):
                assert time.monotonic() < deadline, f"the server did not become ready:\n{hub.log()}"
                time.sleep(0.2)   # polling the hub for readiness

            # the spawner's hook gave the user the bundled notebooks
            status, listing = hub.request("GET", f"/user/{user}/api/contents/notebooks/strategies")
            assert status == 200, listing
            assert "sma_crossover.ipynb" in {item["name"] for item in listing["content"]}

            status, kernel = hub.request("POST", f"/user/{user}/api/kernels", {"name": "python3"})
            assert status == 201, kernel
            home = tmp_path / "hub" / "users" / user
            nb = nbformat.read(home / NOTEBOOK, as_version=4)
            cells = [c.source for c in nb.cells if c.cell_type == "code"]
            tagged = [i for i, c in enumerate(c for c in nb.cells if c.cell_type == "code")
                      if "parameters" in c.metadata.get("tags", [])]
            cells.insert(tagged[0] + 1, "days = 2")          # as papermill injects parameters
            cells.append("import json, farmkit\nprint(json.dumps({'run_id': res.run_id, "
                         "'bars': len(res.fmel), 'farmkit': farmkit.__file__}))")

            async def run_all():
                outputs = []
                for code in cells:
                    outputs += await execute(hub, user, kernel["id"], code)
                return outputs

            outputs = asyncio.run(run_all())
            printed = json.loads([o["text"] for o in outputs if o["kind"] == "stream"][-1])
            assert printed["bars"] > 0
            assert printed["farmkit"].startswith(str(ROOT / "farmkit"))
            # FMEL went to the user's own FARM_HOME in their home
            assert list((home / ".farm").rglob("*.parquet")), "no FMEL under the user's FARM_HOME"
            hub.request("DELETE", f"/user/{user}/api/kernels/{kernel['id']}")
            assert hub.request("DELETE", f"/hub/api/users/{user}/server")[0] in (202, 204)
        except AssertionError:
            print(hub.log())
            raise
