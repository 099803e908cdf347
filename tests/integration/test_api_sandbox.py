"""Uploaded notebooks are hostile. POST /api/agents checks an upload in a sandbox (a child process with an
allow-listed environment, a scratch home, limits, and where Linux allows a jail of its own: read-only
root, no network, its own processes), never in the API; no response, log line or stored row carries a
credential. A hostile notebook probes it: it reads the environment, the API's process and credential
files, writes into the API's home and agents folder, connects to a socket on loopback, raises an error
with the Alpaca secret in it, and (another one) never ends. Every secret planted in the API's environment
is then searched for in everything the API answered, logged and stored."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import nbformat
import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

import farmkit as fk
from farmkit.api import ApiSettings, create_app
from farmkit.ops.agents import LocalAgentStore
from tests.conftest import need
from tests.integration.test_api import create_agent
from tests.jwks_server import new_key

MARK = "plant3d"            # in every planted secret's value, never in the notebook's own text
TOKEN = f"local-{MARK}-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSION = "THEFARM_TEST_SESSION"    # the suite's mark on the processes it starts (see conftest.py)


def planted(tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The environment of a cloud API pod with every kind of credential (all made up), and the secret
    values in it that no output may contain."""
    key = new_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    key_id = f"{MARK}{uuid.uuid4().hex}"
    credentials = tmp / "credentials" / "farm-api.json"
    credentials.parent.mkdir(parents=True)
    credentials.write_text(json.dumps({"type": "service_account", "project_id": "my-project",
                                       "private_key_id": key_id, "private_key": key,
                                       "client_email": "farm-api@my-project.iam.gserviceaccount.com"}))
    redis_password = f"{MARK}-{uuid.uuid4().hex[:16]}"
    env = {"APCA_API_KEY_ID": f"PK{MARK.upper()}{uuid.uuid4().hex[:12].upper()}",
           "APCA_API_SECRET_KEY": f"sk-{MARK}-{uuid.uuid4().hex}",
           "AWS_SECRET_ACCESS_KEY": f"{MARK}/{uuid.uuid4().hex}",
           "FIREBASE_API_KEY": f"AIza{MARK}{uuid.uuid4().hex}",
           "GITHUB_TOKEN": f"ghp_{MARK}{uuid.uuid4().hex}",
           "DATABASE_PASSWORD": f"pw-{MARK}-{uuid.uuid4().hex[:10]}",
           "REDIS_URL": f"redis://farm:{redis_password}@10.30.0.3:6379/0",
           "GOOGLE_APPLICATION_CREDENTIALS": str(credentials)}
    body = [line for line in key.splitlines() if line and not line.startswith("-----")]
    values = [v for k, v in env.items() if k not in ("REDIS_URL", "GOOGLE_APPLICATION_CREDENTIALS")]
    return env, values + [redis_password, key_id, TOKEN, *body]


def leaks(texts, secrets: list[str]) -> list[str]:
    found = []
    for text in texts:
        found += [s[:12] + "..." for s in secrets if s in text]
    return sorted(set(found))


def notebook(*sources: str) -> dict:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("days = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return json.loads(nbformat.writes(nb))


class Listener:
    """A TCP server on loopback that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.accepted = self.sock.getsockname()[1], 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The API as a pod runs it: credentials in its environment, its own home and agents folder."""
    from farmkit.api.sandbox import LocalSandbox
    tmp = tmp_path_factory.mktemp("sandbox")
    env, secrets = planted(tmp)
    log, root = Captured(), logging.getLogger()
    level = root.level
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        root.addHandler(log)
        root.setLevel(logging.INFO)
        try:
            settings = fk.Settings.from_env({"FARM_HOME": str(tmp / "farm"), "FARM_REDIS": "off",
                                             "FARM_PROGRESS": "off"})
            agents = LocalAgentStore(tmp / "agents")
            settings.home.mkdir(parents=True)
            agents.root.mkdir(parents=True)
            made = {}

            def app(jail=True, **limits):
                api_settings = ApiSettings(token=TOKEN, agents=str(agents.root)).replace(**limits)
                # THEFARM_TEST_SESSION is let through so that the suite finds any process left behind.
                sandbox = LocalSandbox.from_settings(api_settings, settings, agents, keep=(SESSION,), jail=jail)
                made["app"] = create_app(settings, api_settings, agents=agents, sandbox=sandbox)
                return TestClient(made["app"])
            yield {"tmp": tmp, "env": env, "secrets": secrets, "settings": settings, "agents": agents,
                   "log": log, "app": app}
        finally:
            root.removeHandler(log)
            root.setLevel(level)


HOSTILE = """\
import json, os, socket
report = {"planted_in_env": sorted(k for k, v in os.environ.items() if "plant" + "3d" in v)}
print(dict(os.environ))
for target in WRITE:
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write("written by an uploaded notebook")
    except OSError as exc:
        report.setdefault("refused", []).append(type(exc).__name__)
report["read"] = {}
for path in READ:
    try:
        with open(path, "rb") as f:
            report["read"][path] = len(f.read()) > 0
    except OSError as exc:
        report["read"][path] = type(exc).__name__
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=3).close()
    report["network"] = "connected"
except OSError as exc:
    report["network"] = type(exc).__name__
raise RuntimeError(f"probe {json.dumps(report)} secret={os.environ.get('APCA_API_SECRET_KEY')}")
"""


@pytest.fixture(scope="module")
def hostile(api):
    """One upload of the hostile notebook, and what it left behind."""
    listener = Listener()
    writes = [str(api["settings"].home / "pwned.txt"), str(api["agents"].root / "pwned" / "agent.yaml")]
    reads = [f"/proc/{os.getpid()}/environ", api["env"]["GOOGLE_APPLICATION_CREDENTIALS"]]
    source = (HOSTILE.replace("WRITE", repr(writes)).replace("READ", repr(reads))
              .replace("PORT", str(listener.port)))
    client = api["app"](sandbox_timeout=120)
    try:
        answers = create_agent(client, {"name": "hostile", "notebook": notebook(source)}, AUTH)
    finally:
        listener.close()
    outcome = answers[-1].json()
    text = outcome["message"] if "message" in outcome else (outcome.get("error") or "")   # an error, or the check's
    found = re.search(r"probe (\{.*?\}) secret=", text)
    return {"answers": answers, "outcome": outcome, "report": json.loads(found.group(1)) if found else None,
            "writes": writes, "reads": reads, "listener": listener, "text": text}


def test_an_upload_is_accepted_and_checked_asynchronously(hostile):
    first = hostile["answers"][0]
    assert first.status_code == 202, first.text
    accepted = first.json()
    assert accepted["state"] in ("queued", "running") and accepted["name"] == "hostile"
    assert first.headers["location"] == accepted["status_url"] == f"/api/agents/checks/{accepted['id']}"
    assert hostile["outcome"]["state"] == "failed" and hostile["outcome"]["agent"] is None
    assert "cell 2 raised RuntimeError: probe" in hostile["text"] and "\n" not in hostile["text"]
    assert hostile["report"] is not None, hostile["text"]


def test_the_notebook_sees_no_credential_in_its_environment(hostile):
    assert hostile["report"]["planted_in_env"] == []
    assert "secret=None" in hostile["text"]


def jailed(hostile) -> None:
    isolation = hostile["outcome"]["sandbox"]
    need(isolation["filesystem"], f"this machine cannot jail a check: {isolation['not_applied'].get('filesystem')}")


def test_the_notebook_cannot_read_the_apis_environment_or_credential_files(hostile):
    jailed(hostile)
    assert not any(v is True for v in hostile["report"]["read"].values()), hostile["report"]["read"]


def test_the_notebook_cannot_write_into_the_apis_home_or_agents(hostile, api):
    jailed(hostile)
    assert not any(Path(p).exists() for p in hostile["writes"])
    assert [r.name for r in api["agents"].list()] == []


def test_the_notebook_reaches_no_network_where_the_sandbox_can_take_it_away(hostile):
    isolation = hostile["outcome"]["sandbox"]
    assert isolation["kind"] == "local" and isinstance(isolation["network"], bool)
    if isolation["network"]:
        assert hostile["listener"].accepted == 0 and hostile["report"]["network"] != "connected"
    else:       # this machine cannot take a process's network away: the outcome says so
        assert "network" in isolation["not_applied"]


def test_no_planted_secret_is_in_any_answer_log_line_or_stored_file(hostile, api):
    texts = [a.text for a in hostile["answers"]] + api["log"].lines
    for root in (api["settings"].home, api["agents"].root):
        texts += [p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()]
    rows = fk.fmel.runs(store=fk.fmel.stores.open_store(api["settings"].store))
    texts.append(rows.to_json(date_format="iso"))
    assert leaks(texts, api["secrets"]) == []
    assert any("check" in line and "hostile" in line for line in api["log"].lines), api["log"].lines


def _left_behind(marker: str) -> list[str]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and marker in " ".join(process.cmdline()):
                found.append(f"{process.pid}: {' '.join(process.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def _kernels_of_this_process() -> list[psutil.Process]:
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "ipykernel" in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


# Without a jail (no namespaces on this machine, or switched off) the process tree is stopped and
# killed, and whatever left it is found by its mark: the sleep below starts a session of its own.
@pytest.mark.parametrize("jail", [True, False], ids=["jail", "no-jail"])
def test_a_notebook_that_never_ends_is_killed_with_every_process_it_started(api, jail):
    marker = f"{time.time_ns() % 10**6 + 10**6}.5"      # sleep's argument: found again by it
    source = ("import subprocess\n"
              f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
              "while True:\n    pass\n")
    client = api["app"](jail=jail, sandbox_timeout=8)
    try:
        answers = create_agent(client, {"name": "forever", "notebook": notebook(source)}, AUTH, timeout=90)
        outcome = answers[-1].json()
        assert outcome["state"] == "failed", outcome
        isolation = outcome["sandbox"]
        assert isolation["processes"] is jail and ("processes" in isolation["not_applied"]) is not jail
        assert "time limit" in outcome["error"] and "8 s" in outcome["error"], outcome["error"]
        deadline = time.monotonic() + 10
        while _left_behind(marker) and time.monotonic() < deadline:
            time.sleep(0.1)     # a poll interval: killed processes take a moment to be reaped
        assert _left_behind(marker) == []
        assert _left_behind(f"{api['tmp']}") == [] and _kernels_of_this_process() == []
    finally:    # whatever the outcome, nothing this test started may outlive it
        for process in _kernels_of_this_process():
            process.kill()
        for line in _left_behind(marker):
            psutil.Process(int(line.split(":")[0])).kill()


def test_the_sandbox_environment_is_an_allow_list(api, tmp_path):
    from farmkit.api.sandbox import sandbox_environment
    environ = {**os.environ, **api["env"], "FARM_REDIS": "redis://:hunter2hunter2@10.0.0.1/0",
               "FARM_API_TOKEN": "t0ken-t0ken", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "PYTHONPATH": "/x",
               "SOME_KEY_ID": "abc", "MY_SECRET_THING": "x", "LANG": "C.UTF-8", "SESSION_VALUE": "1"}
    env = sandbox_environment(environ, tmp_path / "home", keep=("SESSION_VALUE",))
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "HOME", "TMPDIR", "FARM_HOME",
                        "FARM_REDIS", "FARM_PROGRESS", "FARM_FIGURE_IMAGES", "FARM_STORE", "FARM_BROKER", "PYTHONUNBUFFERED",
                        "PYTHONDONTWRITEBYTECODE", "MPLBACKEND", "MALLOC_ARENA_MAX", "SESSION_VALUE"}
    assert env["HOME"] == str(tmp_path / "home") and env["FARM_HOME"].startswith(env["HOME"])
    assert env["TMPDIR"].startswith(env["HOME"]) and env["FARM_REDIS"] == "off" and env["SESSION_VALUE"] == "1"
    assert leaks([json.dumps(env)], api["secrets"] + ["hunter2hunter2", "t0ken-t0ken"]) == []


def test_redaction_replaces_every_known_secret(api):
    from farmkit.redact import Redactor
    env = {**api["env"], "FARM_REDIS": "rediss://default:hunter2hunter2@10.30.0.3:6378/0", "LANG": "C.UTF-8",
           "FARM_API_AUTH": "firebase", "SHORT_TOKEN": "abc"}
    redactor = Redactor.from_env(env, extra=[TOKEN])
    credentials = Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text()
    text = (f"failed with {env['APCA_API_SECRET_KEY']} and key {env['APCA_API_KEY_ID']}; url {env['REDIS_URL']} "
            f"and rediss://default:hunter2hunter2@10.30.0.3:6378/0; header Authorization: Bearer {TOKEN}; "
            f"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl; file {credentials}; "
            f"{json.dumps(credentials)}; {env['FIREBASE_API_KEY']!r} firebase auth, C.UTF-8 abc")
    clean = redactor.text(text)
    assert leaks([clean], api["secrets"] + ["hunter2hunter2", "eyJzdWIiOiJ4In0"]) == []
    assert "***" in clean and "10.30.0.3:6378" in clean and "firebase auth, C.UTF-8 abc" in clean
    assert redactor.text("nothing secret here") == "nothing secret here"


def test_api_errors_and_its_log_carry_no_secret(api):
    secret = api["env"]["APCA_API_SECRET_KEY"]

    class Leaky:
        def get(self, name):
            raise RuntimeError(f"the bucket refused key {secret}")

        def list(self):
            raise RuntimeError(f"the bucket refused key {secret}")

    class LeakyStore:
        class runs:
            @staticmethod
            def get(run_id):
                raise ConnectionError(f"cannot reach redis://farm:{secret}@10.0.0.3/0")

    settings = api["settings"]
    app = create_app(settings, ApiSettings(token=TOKEN, agents=str(api["agents"].root)), agents=Leaky(),
                     store=LeakyStore())
    client = TestClient(app)
    answers = [client.get("/api/agents", headers=AUTH), client.get("/readyz")]
    assert answers[0].status_code == 500 and "incident" in answers[0].json()["message"]
    assert answers[1].status_code == 503 and "***" in answers[1].json()["checks"]["store"]
    logged = [line for line in api["log"].lines if "the bucket refused" in line]
    assert logged and all("***" in line for line in logged)
    assert leaks([a.text for a in answers] + api["log"].lines, [secret]) == []


def test_other_users_uploads_are_refused_where_no_jail_can_be_made(api):
    from farmkit.api.auth import User
    from farmkit.api.sandbox import LocalSandbox

    class Mallory:      # a signed-in user who is not the machine's owner (as a Firebase user is)
        def verifies_offline(self, token):
            return True

        def authenticate(self, token):
            return User(uid="mallory")
    app = create_app(api["settings"], ApiSettings(token=TOKEN, agents=str(api["agents"].root)), agents=api["agents"],
                     sandbox=LocalSandbox(jail=False), auth=Mallory())
    refused = TestClient(app).post("/api/agents", json={"name": "mine", "notebook": notebook("x = 1")}, headers=AUTH)
    assert refused.status_code == 503 and refused.json()["error"] == "sandbox_unavailable", refused.text
    assert "switched off" in refused.json()["message"] and "kubernetes://" in refused.json()["message"]
