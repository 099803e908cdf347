"""Where promoted agents live, behind one interface: a local folder (``agents/``) or a GCS bucket.

An agent is a folder holding ``agent.ipynb`` and ``agent.yaml`` (see :mod:`farmkit.ops.promote`); the
store adds who owns it and the agent's immutable id (``owner:`` and ``agent_uid:`` lines in
``agent.yaml``). The id is made when an agent of that name is first stored, kept when its owner
replaces it, and new after a delete: runs belong to an id, so a new agent that takes a deleted
agent's name sees none of its runs.

    store = open_agent_store("agents")                  # the local folder
    store = open_agent_store("gs://my-farm-agents/agents")   # a bucket and an optional prefix
    store.put("sma-cross", promoted_folder, owner="uid-123")
    store.get("sma-cross").owner, store.materialize("sma-cross")   # a local folder the runner can run
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from farmkit.errors import ConfigError
from farmkit.ops.promote import _check_name

FILES = ("agent.ipynb", "agent.yaml")
OPTIONAL = ("requirements.lock",)   # stored when the promotion wrote it (older agents have none)


@dataclass(frozen=True)
class AgentRecord:
    """One stored agent: its manifest, its owner (None for agents put there by hand), its immutable id
    (None for agents put there by hand) and when it was stored."""

    name: str
    manifest: dict
    owner: str | None
    updated_at: float | None
    uid: str | None = None


class AgentStore(Protocol):
    """What the REST API needs from a place that keeps agents."""

    def list(self) -> list[AgentRecord]: ...

    def get(self, name: str) -> AgentRecord | None: ...

    def put(self, name: str, folder: Path, owner: str | None) -> AgentRecord: ...

    def delete(self, name: str) -> bool: ...

    def materialize(self, name: str) -> Path: ...

    def check(self) -> None: ...


def _with_owner(manifest_text: str, owner: str | None, uid: str) -> str:
    lines = [line for line in manifest_text.splitlines() if not line.startswith(("owner:", "agent_uid:"))]
    if owner is not None:
        lines.append(yaml.safe_dump({"owner": owner}, default_flow_style=False).strip())
    lines.append(yaml.safe_dump({"agent_uid": uid}, default_flow_style=False).strip())
    return "\n".join(lines) + "\n"


def _uid_for(existing: AgentRecord | None, owner: str | None) -> str:
    # Its owner replacing an agent keeps it the same agent; anyone else's agent of that name is another.
    if existing is not None and existing.uid and existing.owner == owner:
        return existing.uid
    return uuid.uuid4().hex


def _record(name: str, manifest_text: str, updated_at: float | None) -> AgentRecord:
    manifest = yaml.safe_load(manifest_text) or {}
    if not isinstance(manifest, dict):
        raise ConfigError(f"agent {name}: agent.yaml is not a mapping")
    owner, uid = manifest.pop("owner", None), manifest.pop("agent_uid", None)
    return AgentRecord(name=name, manifest=manifest, owner=None if owner is None else str(owner),
                       updated_at=updated_at, uid=None if uid is None else str(uid))


def _valid(name: str) -> bool:
    try:
        _check_name(name)
        return True
    except Exception:   # noqa: BLE001 - a name that is no agent's is simply not found
        return False


class LocalAgentStore:
    """Agents as folders under ``root`` (``agents/`` in the repository)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LocalAgentStore({str(self.root)!r})"

    def _folder(self, name: str) -> Path | None:
        folder = self.root / name
        return folder if _valid(name) and (folder / "agent.yaml").is_file() else None

    def list(self) -> list[AgentRecord]:
        if not self.root.is_dir():
            return []
        return [r for r in (self.get(p.name) for p in sorted(self.root.iterdir())) if r is not None]

    def get(self, name: str) -> AgentRecord | None:
        folder = self._folder(name)
        if folder is None:
            return None
        path = folder / "agent.yaml"
        return _record(name, path.read_text(encoding="utf-8"), path.stat().st_mtime)

    def put(self, name: str, folder: Path, owner: str | None) -> AgentRecord:
        _check_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        uid = _uid_for(self.get(name), owner)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        for file in FILES + tuple(f for f in OPTIONAL if (Path(folder) / f).is_file()):
            shutil.copyfile(Path(folder) / file, staging / file)
        manifest = staging / "agent.yaml"
        manifest.write_text(_with_owner(manifest.read_text(encoding="utf-8"), owner, uid), encoding="utf-8")
        target = self.root / name
        old = target.with_name(f".{name}.old-{time.time_ns()}") if target.exists() else None
        if old:
            target.rename(old)
        staging.rename(target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return self.get(name)

    def delete(self, name: str) -> bool:
        folder = self._folder(name)
        if folder is None:
            return False
        shutil.rmtree(folder)
        return True

    def materialize(self, name: str) -> Path:
        folder = self._folder(name)
        if folder is None:
            raise KeyError(f"no agent {name!r} in {self.root}")
        return folder

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root} is not a folder")


class GcsAgentStore:
    """Agents in a Google Cloud Storage bucket: ``PREFIX/NAME/agent.ipynb`` and ``PREFIX/NAME/agent.yaml``.

    ``client`` is a ``google.cloud.storage.Client`` (default: one with the ambient credentials; it
    honours ``STORAGE_EMULATOR_HOST``). ``materialize`` downloads an agent into ``cache``.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client=None, cache: str | Path | None = None):
        if client is None:
            try:
                from google.cloud import storage
            except ImportError as exc:
                raise ConfigError(f"gs:// agents need google-cloud-storage: pip install 'thefarm[api]' ({exc})") from exc
            client = storage.Client()
        self.client, self.bucket_name = client, bucket
        self.bucket = client.bucket(bucket)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.cache = Path(cache or tempfile.mkdtemp(prefix="farm-agents-"))

    def __repr__(self) -> str:
        return f"GcsAgentStore('gs://{self.bucket_name}/{self.prefix}')"

    def _blob(self, name: str, file: str):
        return self.bucket.blob(f"{self.prefix}{name}/{file}")

    def list(self) -> list[AgentRecord]:
        iterator = self.client.list_blobs(self.bucket_name, prefix=self.prefix, delimiter="/")
        list(iterator)      # the prefixes are known once the pages are read
        names = sorted(p[len(self.prefix):].strip("/") for p in iterator.prefixes)
        return [r for r in (self.get(n) for n in names) if r is not None]

    def get(self, name: str) -> AgentRecord | None:
        from google.api_core.exceptions import NotFound
        if not _valid(name):
            return None
        blob = self._blob(name, "agent.yaml")
        try:
            text = blob.download_as_text()
        except NotFound:
            return None
        updated = blob.updated.timestamp() if getattr(blob, "updated", None) else None
        return _record(name, text, updated)

    def put(self, name: str, folder: Path, owner: str | None) -> AgentRecord:
        _check_name(name)
        uid = _uid_for(self.get(name), owner)
        self._blob(name, "agent.ipynb").upload_from_filename(str(Path(folder) / "agent.ipynb"),
                                                             content_type="application/x-ipynb+json")
        for file in OPTIONAL:
            if (Path(folder) / file).is_file():
                self._blob(name, file).upload_from_filename(str(Path(folder) / file), content_type="text/plain")
        text = _with_owner((Path(folder) / "agent.yaml").read_text(encoding="utf-8"), owner, uid)
        # The manifest last: an agent is listed once its manifest is there, and by then its notebook is.
        self._blob(name, "agent.yaml").upload_from_string(text, content_type="application/yaml")
        return self.get(name)

    def delete(self, name: str) -> bool:
        from google.api_core.exceptions import NotFound
        if self.get(name) is None:
            return False
        for file in ("agent.yaml", "agent.ipynb", *OPTIONAL):   # the manifest first: no half agent is ever listed
            try:
                self._blob(name, file).delete()
            except NotFound:
                pass
        return True

    def materialize(self, name: str) -> Path:
        if self.get(name) is None:
            raise KeyError(f"no agent {name!r} in gs://{self.bucket_name}/{self.prefix}")
        folder = self.cache / name
        folder.mkdir(parents=True, exist_ok=True)
        for file in FILES:
            self._blob(name, file).download_to_filename(str(folder / file))
        for file in OPTIONAL:
            blob = self._blob(name, file)
            if blob.exists():
                blob.download_to_filename(str(folder / file))
        return folder

    def check(self) -> None:
        self.bucket.reload()    # raises when the bucket is not there or not readable


def open_agent_store(location: str | Path, **kwargs) -> AgentStore:
    """``gs://BUCKET[/PREFIX]`` for a bucket, anything else (``agents``, ``file:///srv/agents``) a local folder."""
    location = str(location)
    if location.startswith("gs://"):
        bucket, _, prefix = location[len("gs://"):].partition("/")
        if not bucket:
            raise ConfigError(f"agents location {location!r}: expected gs://BUCKET[/PREFIX]")
        return GcsAgentStore(bucket, prefix, **kwargs)
    if "://" in location and not location.startswith("file://"):
        raise ConfigError(f"agents location {location!r}: use a folder path, file://PATH or gs://BUCKET[/PREFIX]")
    return LocalAgentStore(location.removeprefix("file://"))
