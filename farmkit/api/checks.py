"""The checks of uploaded notebooks. ``POST /api/agents`` stores the upload and queues its check; a
worker thread runs it in the sandbox (:mod:`farmkit.api.sandbox`: a child process, or a Job on GKE)
and, when it passes, stores the promoted agent under its uploader; ``GET /api/agents/checks/{id}``
reads the check's record: ``queued``, ``running``, ``passed`` (with the agent) or ``failed`` (with the
reason, in one line, redacted).

Records are kept a week: in Redis when the API has one (so that every replica answers for every
check), else in ``FARM_HOME/api/checks``.

    checks = Checks(sandbox, agents, FolderRecords(home / "api" / "checks"), home / "api" / "uploads")
    record = checks.submit("sma-cross", owner="uid-1", notebook=data)
    checks.get(record["id"])["state"]            # queued | running | passed | failed
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import shutil
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import nbformat
import yaml

from farmkit.redact import Redactor
from farmkit.errors import FarmError
from farmkit.live import checkpoint

log = logging.getLogger("farmkit.api")
FINAL = ("passed", "failed")
RETENTION = 7 * 86400.0
FILES = ("agent.ipynb", "agent.yaml", "requirements.lock")
_MAX_FILE = 64 << 20


class CheckFailed(Exception):
    """Why a check failed, for its record."""


class FolderRecords:
    """Check records as JSON files in a folder (one API process, or replicas sharing a disk)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def put(self, record: dict) -> None:
        checkpoint.write_json(self.folder / f"{record['id']}.json", record)

    def get(self, check_id: str) -> dict | None:
        try:
            return checkpoint.read_json(self.folder / f"{check_id}.json")
        except checkpoint.CheckpointError:
            return None

    def prune(self, before: float) -> None:
        for path in self.folder.glob("*.json") if self.folder.is_dir() else ():
            try:
                if path.stat().st_mtime < before:
                    path.unlink()
            except OSError:
                pass


class RedisRecords:
    """Check records in Redis, each expiring a week after its last change."""

    def __init__(self, client, prefix: str = "farm:api:check:", ttl: float = RETENTION):
        self.client, self.prefix, self.ttl = client, prefix, int(ttl)

    def put(self, record: dict) -> None:
        self.client.set(self.prefix + record["id"], json.dumps(record), ex=self.ttl)

    def get(self, check_id: str) -> dict | None:
        text = self.client.get(self.prefix + check_id)
        return json.loads(text) if text else None

    def prune(self, before: float) -> None:
        pass        # they expire


class Checks:
    """Queues uploads, runs their checks in ``sandbox`` (``workers`` at a time) and registers the agents
    of those that pass in ``agents``. ``describe`` turns a stored agent into what the record shows."""

    def __init__(self, sandbox, agents, records, uploads: str | Path, *, redactor: Redactor | None = None,
                 workers: int = 2, timeout: float = 900.0, describe: Callable | None = None):
        self.sandbox, self.agents, self.records, self.uploads = sandbox, agents, records, Path(uploads)
        self.redact = redactor or Redactor()
        self.workers, self.timeout = max(1, int(workers)), float(timeout)
        self.describe = describe or (lambda record: {"name": record.name, "owner": record.owner})
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, name: str, *, owner: str | None, notebook: bytes, admin: bool = False, force: bool = False,
               allow_overfit: bool = False) -> dict:
        """Store the upload and queue its check; its record (state ``queued``)."""
        check_id, now = uuid.uuid4().hex, time.time()
        self.uploads.mkdir(parents=True, exist_ok=True)
        (self.uploads / f"{check_id}.ipynb").write_bytes(notebook)
        with self._lock:
            ahead = len(self._active)
            self._active.add(check_id)
        record = {"id": check_id, "name": name, "owner": owner, "admin": admin, "force": force,
                  "allow_overfit": allow_overfit, "state": "queued", "created_at": now, "started_at": None,
                  "finished_at": None, "deadline": now + self.timeout * (1 + ahead // self.workers) + 120,
                  "error": None, "agent": None, "sandbox": self.sandbox.isolation}
        self.records.put(record)
        self.records.prune(now - RETENTION)
        self._start()
        self._queue.put(check_id)
        log.info("check %s of agent %s by %s: queued", check_id, name, owner)
        return record

    def get(self, check_id: str) -> dict | None:
        """A check's record (None when there is none); one that was lost (the API stopped while it
        ran) reads as failed once its deadline has passed."""
        record = self.records.get(check_id)
        if (record is not None and record["state"] not in FINAL and time.time() > record["deadline"]
                and check_id not in self._active):
            record.update(state="failed", finished_at=time.time(), error="the check did not finish: the API "
                          "stopped while it ran; upload the notebook again")
            self.records.put(record)
        return record

    def close(self) -> None:
        """Stop the workers; checks still running are killed (their records read as failed later)."""
        for _ in self._threads:
            self._queue.put(None)
        close = getattr(self.sandbox, "close", None)
        if close is not None:
            close()

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"farm-check-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            check_id = self._queue.get()
            if check_id is None:
                return
            try:
                self._run(check_id)
            finally:
                with self._lock:
                    self._active.discard(check_id)

    def _run(self, check_id: str) -> None:
        record = self.records.get(check_id)
        upload = self.uploads / f"{check_id}.ipynb"
        if record is None:
            upload.unlink(missing_ok=True)
            return
        record.update(state="running", started_at=time.time(), deadline=time.time() + self.timeout + 120)
        self.records.put(record)
        try:
            run = self.sandbox.check(check_id, upload.read_bytes(), name=record["name"],
                                     allow_overfit=record["allow_overfit"])
            record["sandbox"] = run.isolation or record["sandbox"]
            if run.timed_out:
                raise CheckFailed(f"the notebook did not finish within the time limit ({self.timeout:g} s) and was "
                                  "stopped, with every process it started; make it faster (fewer bars or "
                                  "parameters), or raise FARM_API_SANDBOX_TIMEOUT")
            if run.result is None:
                last = run.output.strip().splitlines()[-1:] or ["no output"]
                raise CheckFailed(f"the sandbox ended without an outcome (exit code {run.exit_code}): {last[0]}")
            if not run.result.get("passed"):
                raise CheckFailed(run.result.get("error") or "the check failed and did not say why")
            record["agent"] = self._register(record, run.result.get("files") or {})
            record["state"] = "passed"
        except (CheckFailed, FarmError) as exc:     # what to fix: the message says
            record.update(state="failed", error=self._line(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is a failed check, said plainly
            log.exception("check %s of agent %s could not run", check_id, record["name"])
            record.update(state="failed", error=self._line(f"the check could not run: {type(exc).__name__}: {exc}"))
        finally:
            record["finished_at"] = time.time()
            self.records.put(record)
            upload.unlink(missing_ok=True)
        log.info("check %s of agent %s by %s: %s%s", check_id, record["name"], record["owner"], record["state"],
                 f" ({record['error']})" if record["error"] else "")

    def _line(self, text: str) -> str:
        return self.redact.text(" ".join(text.split()))[:1000]

    def _register(self, record: dict, packed: dict) -> dict:
        """Store a passed check's agent under its uploader, as ``farm promote`` made it in the sandbox."""
        files = {}
        for name, data in packed.items():
            if name in FILES and isinstance(data, str):
                unpacked = zlib.decompressobj(wbits=31).decompress(base64.b64decode(data), _MAX_FILE + 1)
                if len(unpacked) > _MAX_FILE:
                    raise CheckFailed(f"the promoted agent's {name} is larger than {_MAX_FILE >> 20} MiB")
                files[name] = unpacked
        name = record["name"]
        if not {"agent.ipynb", "agent.yaml"} <= set(files):
            raise CheckFailed("the sandbox sent back no agent.ipynb and agent.yaml")
        try:
            manifest = yaml.safe_load(files["agent.yaml"].decode("utf-8"))
            nbformat.validate(nbformat.reads(files["agent.ipynb"].decode("utf-8"), as_version=4))
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with them, they are not an agent
            raise CheckFailed(f"the promoted agent is not valid: {type(exc).__name__}: {exc}") from None
        if (not isinstance(manifest, dict) or manifest.get("name") != name or {"owner", "agent_uid"} & set(manifest)
                or manifest.get("notebook_sha256") != hashlib.sha256(files["agent.ipynb"]).hexdigest()):
            raise CheckFailed("the promoted agent's manifest does not describe its notebook")
        existing = self.agents.get(name)
        if existing is not None and not (record["admin"] or existing.owner == record["owner"]):
            raise CheckFailed(f"agent {name!r} was created by another user meanwhile; choose another name")
        if existing is not None and not record["force"]:
            raise CheckFailed(f"agent {name!r} was created meanwhile; send force=true to replace it")
        folder = Path(tempfile.mkdtemp(prefix="farm-agent-"))
        try:
            for file, data in files.items():
                (folder / file).write_bytes(data)
            stored = self.agents.put(name, folder, owner=record["owner"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return self.describe(stored)
