"""Paper-trading sessions of agents, started and stopped on request: a child process per agent on one
machine, or the agent's StatefulSet on Kubernetes.

    orchestrator = LocalProcessOrchestrator(settings, agent_store)
    orchestrator.start("sma-crossover", owner="uid-1")       # python -m runner agents/sma-crossover
    orchestrator.status("sma-crossover")["state"]            # starting | running | stopping | stopped | failed
    orchestrator.stop("sma-crossover")                       # SIGTERM: the runner stops cleanly

Both record who started a session (its owner); the REST API lets only that user control it.

:class:`KubernetesSandbox` is the GKE side of the REST API's sandbox (``farmkit.api.sandbox``): the check
of an uploaded notebook as a Job in a namespace of its own, on gVisor, without credentials.
"""

from __future__ import annotations

import base64
import collections
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import yaml

from farmkit.live import checkpoint
from farmkit.errors import ConfigError, FarmError
from farmkit.settings import Settings


class OrchestratorError(FarmError, RuntimeError):
    """A session cannot be started or stopped; the message says why and what to do."""


class Orchestrator(Protocol):
    def start(self, name: str, owner: str | None) -> dict: ...

    def stop(self, name: str) -> dict: ...

    def status(self, name: str) -> dict: ...

    def logs(self, name: str, lines: int = 100) -> list[str]: ...

    def owner(self, name: str) -> str | None: ...


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.seek(max(0, handle.tell() - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    kept = text.splitlines()
    if size:
        kept = kept[1:]         # a partial first line
    return list(collections.deque(kept, maxlen=max(0, lines)))


class LocalProcessOrchestrator:
    """Each agent's paper run is ``python -m runner AGENT_DIR``, a child process in its own process group,
    with its state in ``FARM_HOME/agents/NAME/state`` and its log in ``FARM_HOME/api/paper/NAME.log``.
    The child gets this process's settings (store, bus, broker, Redis, replay) and a health port of its own."""

    def __init__(self, settings: Settings, agents, *, python: str = sys.executable, grace: float = 20.0,
                 environ: dict | None = None):
        self.settings, self.agents, self.python, self.grace = settings, agents, python, grace
        self.environ = dict(os.environ if environ is None else environ)
        self.folder = settings.home / "api" / "paper"
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def state_dir(self, name: str) -> Path:
        return self.settings.home / "agents" / name / "state"

    def _record_path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def _record(self, name: str) -> dict | None:
        try:
            return checkpoint.read_json(self._record_path(name))
        except checkpoint.CheckpointError:
            return None

    def _environment(self, name: str) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in self.environ.items() if not k.startswith("FARM_")}
        env.update({"FARM_HOME": str(s.home), "FARM_STORE": s.store, "FARM_BUS": s.bus, "FARM_BROKER": s.broker,
                    "FARM_STATE_DIR": str(self.state_dir(name)), "FARM_HEALTH_PORT": "0", "FARM_PROGRESS": "off",
                    "FARM_WARMUP": s.warmup, "PYTHONUNBUFFERED": "1"})
        if s.redis:
            env["FARM_REDIS"] = s.redis
        if s.replay:
            env["FARM_REPLAY"] = s.replay
            env["FARM_REPLAY_SPEED"] = f"{s.replay_speed:g}"
        if s.warmup_bars is not None:
            env["FARM_WARMUP_BARS"] = str(s.warmup_bars)
        return env

    def _alive(self, name: str, record: dict | None) -> bool:
        child = self._children.get(name)
        if child is not None:
            return child.poll() is None
        if not record or not record.get("pid"):
            return False
        try:                    # started by an earlier API process: is that pid still our runner?
            cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"runner" in cmdline

    def start(self, name: str, owner: str | None) -> dict:
        with self._lock:
            record = self._record(name)
            if self._alive(name, record):
                raise OrchestratorError(f"agent {name} is already paper-trading (pid {record['pid']}); "
                                        "stop it first")
            agent_dir = self.agents.materialize(name)
            self.folder.mkdir(parents=True, exist_ok=True)
            log_path = self.folder / f"{name}.log"
            with open(log_path, "ab") as log:
                child = subprocess.Popen([self.python, "-m", "runner", str(agent_dir), "--grace", f"{self.grace:g}"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self._environment(name), start_new_session=True)
            self._children[name] = child
            checkpoint.write_json(self._record_path(name), {
                "agent": name, "owner": owner, "pid": child.pid, "started_at": time.time(), "stopped_at": None,
                "exit_code": None, "state_dir": str(self.state_dir(name)), "log": str(log_path)})
        return self.status(name)

    def stop(self, name: str) -> dict:
        with self._lock:
            record = self._record(name)
            if not self._alive(name, record):
                raise OrchestratorError(f"agent {name} is not paper-trading; start it first")
            try:
                os.killpg(record["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            record["stop_requested_at"] = time.time()
            checkpoint.write_json(self._record_path(name), record)
        return self.status(name)

    def wait(self, name: str, timeout: float) -> int | None:
        """Wait for a child this process started to end; its exit code, or None if it is still running."""
        child = self._children.get(name)
        if child is None:
            return None
        try:
            return child.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def owner(self, name: str) -> str | None:
        return (self._record(name) or {}).get("owner")

    def status(self, name: str) -> dict:
        record = self._record(name)
        if record is None:
            return {"agent": name, "state": "not_started", "owner": None, "pid": None, "started_at": None,
                    "exit_code": None, "run_id": None, "paper": {}}
        alive = self._alive(name, record)
        child = self._children.get(name)
        exit_code = record.get("exit_code")
        if not alive and child is not None and exit_code is None:
            exit_code = child.returncode
            record.update(exit_code=exit_code, stopped_at=time.time())
            checkpoint.write_json(self._record_path(name), record)
        try:
            paper = checkpoint.read_json(Path(record["state_dir"]) / checkpoint.STATUS) or {}
        except checkpoint.CheckpointError:
            paper = {}
        if paper.get("updated_at", 0) < record["started_at"]:
            paper = {}          # left by an earlier session
        if alive:
            state = "stopping" if record.get("stop_requested_at") else (
                "running" if paper.get("state") in ("live", "warming") else "starting")
        elif exit_code == 0 or (exit_code is None and paper.get("state") == "stopped"):
            state = "stopped"       # (exit code unknown: a runner an earlier API process started)
        else:
            state = "failed"
        return {"agent": name, "state": state, "owner": record.get("owner"), "pid": record.get("pid"),
                "started_at": record.get("started_at"), "exit_code": exit_code, "run_id": paper.get("run_id"),
                "paper": paper}

    def logs(self, name: str, lines: int = 100) -> list[str]:
        return _tail(self.folder / f"{name}.log", lines)


# --- Kubernetes ----------------------------------------------------------------------------------------

OWNER_ANNOTATION = "thefarm.dev/owner"


def _default_render(agent_dir: Path, **kwargs):
    try:
        from farmkit.ops.deploy import render_agent
    except ImportError as exc:
        raise ConfigError(f"the Kubernetes orchestrator renders agents with farmkit.ops.deploy.render_agent, "
                          f"which this farmkit does not have ({exc})") from None
    return render_agent(agent_dir, **kwargs)


def manifests(rendered) -> list[dict]:
    """``render_agent``'s output as a list of objects: it may be one object, a list, or YAML text."""
    if isinstance(rendered, str):
        objects = [o for o in yaml.safe_load_all(rendered) if o]
    elif isinstance(rendered, dict):
        objects = rendered.get("items") if rendered.get("kind") == "List" else [rendered]
    else:
        objects = list(rendered)
    for obj in objects:
        if not isinstance(obj, dict) or "kind" not in obj:
            raise ConfigError(f"render_agent gave something that is not a Kubernetes object: {str(obj)[:200]}")
    return objects


def _kubernetes():
    """The ``kubernetes.client`` module, configured in-cluster or from ``~/.kube/config``."""
    from kubernetes import client, config
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client


class KubernetesOrchestrator:
    """Each agent's paper run is its StatefulSet (``render_agent(agent_dir)`` from :mod:`farmkit.ops.deploy`,
    the same templates as ``k8s/``), created and deleted through the official ``kubernetes`` client.

    ``apps`` and ``core`` are ``kubernetes.client.AppsV1Api`` / ``CoreV1Api`` (default: from the
    in-cluster configuration, or ``~/.kube/config``)."""

    def __init__(self, agents, namespace: str = "default", *, apps=None, core=None,
                 render: Callable | None = None, render_options: dict | None = None):
        if apps is None or core is None:
            client = _kubernetes()
            apps, core = apps or client.AppsV1Api(), core or client.CoreV1Api()
        self.agents, self.namespace, self.apps, self.core = agents, namespace, apps, core
        self.render = render or _default_render
        self.render_options = {"namespace": namespace, **(render_options or {})}

    def _objects(self, name: str, owner: str | None) -> list[dict]:
        objects = manifests(self.render(self.agents.materialize(name), **self.render_options))
        for obj in objects:
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", self.namespace)
            if owner is not None:
                meta.setdefault("annotations", {})[OWNER_ANNOTATION] = owner
        return objects

    def _statefulset(self, name: str):
        from kubernetes.client.exceptions import ApiException
        try:
            return self.apps.read_namespaced_stateful_set(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def start(self, name: str, owner: str | None) -> dict:
        from kubernetes.client.exceptions import ApiException
        if self._statefulset(name) is not None:
            raise OrchestratorError(f"agent {name} is already paper-trading (StatefulSet {self.namespace}/{name}); "
                                    "stop it first")
        for obj in self._objects(name, owner):
            create, replace, _ = self._verbs(obj["kind"])
            try:
                create(namespace=self.namespace, body=obj)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                replace(name=obj["metadata"]["name"], namespace=self.namespace, body=obj)
        return self.status(name)

    def _verbs(self, kind: str):
        apps, core = self.apps, self.core
        verbs = {
            "StatefulSet": (apps.create_namespaced_stateful_set, apps.replace_namespaced_stateful_set,
                            apps.delete_namespaced_stateful_set),
            "Service": (core.create_namespaced_service, core.patch_namespaced_service, core.delete_namespaced_service),
            "ConfigMap": (core.create_namespaced_config_map, core.replace_namespaced_config_map,
                          core.delete_namespaced_config_map),
        }
        if kind not in verbs:
            raise ConfigError(f"the Kubernetes orchestrator cannot apply a {kind}; it applies {', '.join(verbs)}")
        return verbs[kind]

    def stop(self, name: str) -> dict:
        from kubernetes.client.exceptions import ApiException
        if self._statefulset(name) is None:
            raise OrchestratorError(f"agent {name} is not paper-trading (no StatefulSet {self.namespace}/{name})")
        status = self.status(name)
        # The StatefulSet first, in the foreground: its pod gets SIGTERM and its grace period (the runner
        # flushes FMEL and saves its checkpoint); then the agent's other objects. The volume claim stays,
        # so a later start resumes from the checkpoint.
        objects = sorted(self._objects(name, None), key=lambda o: o["kind"] != "StatefulSet")
        for obj in objects:
            delete = self._verbs(obj["kind"])[2]
            try:
                delete(name=obj["metadata"]["name"], namespace=self.namespace, propagation_policy="Foreground")
            except ApiException as exc:
                if exc.status != 404:
                    raise
        return {**status, "state": "stopping"}

    def owner(self, name: str) -> str | None:
        sts = self._statefulset(name)
        annotations = (sts.metadata.annotations or {}) if sts is not None else {}
        return annotations.get(OWNER_ANNOTATION)

    def status(self, name: str) -> dict:
        sts = self._statefulset(name)
        if sts is None:
            return {"agent": name, "state": "not_started", "owner": None, "pid": None, "started_at": None,
                    "exit_code": None, "run_id": None, "paper": {}}
        ready = (sts.status.ready_replicas or 0) if sts.status is not None else 0
        created = sts.metadata.creation_timestamp
        return {"agent": name, "state": "stopping" if sts.metadata.deletion_timestamp else
                ("running" if ready else "starting"),
                "owner": (sts.metadata.annotations or {}).get(OWNER_ANNOTATION), "pid": None,
                "started_at": created.timestamp() if created is not None else None, "exit_code": None,
                "run_id": None, "paper": {"ready_replicas": ready}}

    def logs(self, name: str, lines: int = 100) -> list[str]:
        from kubernetes.client.exceptions import ApiException
        try:
            text = self.core.read_namespaced_pod_log(f"{name}-0", self.namespace, tail_lines=lines)
        except ApiException as exc:
            if exc.status in (400, 404):    # no pod yet, or its container has not started
                return []
            raise
        return text.splitlines()[-lines:] if lines else []


# --- the sandbox of uploaded notebooks, on Kubernetes ------------------------------------------------------

SANDBOX_NAMESPACE = "farm-sandbox"
SANDBOX_RESULT = "farm-sandbox-result "      # the line a sandbox worker ends with: this, then its outcome's JSON
CHECK_LABEL = "thefarm.dev/check"
_MAX_UPLOAD = 1_000_000        # a ConfigMap holds at most 1 MiB


@dataclass(frozen=True)
class SandboxRun:
    """What one sandboxed check gave: the worker's outcome (None when it printed none), its exit code,
    whether the time limit ended it, the last lines it printed, and the isolation it ran under."""

    result: dict | None
    exit_code: int | None
    timed_out: bool
    output: str = ""
    isolation: dict = field(default_factory=dict)


def sandbox_output(text: str, keep: int = 20) -> tuple[dict | None, str]:
    """The outcome a sandbox worker printed last, parsed, and the last ``keep`` other lines."""
    result, others = None, collections.deque(maxlen=keep)
    for line in text.splitlines():
        if line.startswith(SANDBOX_RESULT):
            try:
                found = json.loads(line[len(SANDBOX_RESULT):])
            except json.JSONDecodeError:
                continue
            result = found if isinstance(found, dict) else result
        elif line.strip():
            others.append(line[:500])
    return result, "\n".join(others)


class KubernetesSandbox:
    """Each check is a Job in a namespace of its own (``farm-sandbox``): the runner image under gVisor
    (``runtimeClassName: gvisor``, GKE Sandbox), no service-account token, no Workload Identity, no
    environment from ConfigMaps or Secrets, a read-only root, resource limits and a deadline; the
    namespace's NetworkPolicy denies all egress (``k8s/base/sandbox``). The upload goes in as a
    ConfigMap mounted read-only; the outcome comes back as the last line of the pod's log.

    ``batch`` and ``core`` are ``kubernetes.client.BatchV1Api`` / ``CoreV1Api`` (default: from the
    in-cluster configuration, or ``~/.kube/config``)."""

    kind = "kubernetes"

    def __init__(self, namespace: str = SANDBOX_NAMESPACE, *, image: str | None = None, timeout: float = 900.0,
                 memory_mib: int = 4096, cpu: str = "1", batch=None, core=None, poll: float = 2.0,
                 service_account: str = "farm-sandbox", runtime_class: str = "gvisor"):
        if batch is None or core is None:
            client = _kubernetes()
            batch, core = batch or client.BatchV1Api(), core or client.CoreV1Api()
        if image is None:
            from farmkit.ops.deploy import DEFAULT_IMAGE
            image = DEFAULT_IMAGE
        self.namespace, self.image, self.timeout, self.memory_mib, self.cpu = namespace, image, timeout, memory_mib, cpu
        self.batch, self.core, self.poll = batch, core, poll
        self.service_account, self.runtime_class = service_account, runtime_class

    @property
    def isolation(self) -> dict:
        return {"kind": self.kind, "namespace": self.namespace, "runtime_class": self.runtime_class,
                "network": True, "filesystem": True, "processes": True, "user": "10001 (non-root)",
                "environment": "allow-list", "service_account_token": False,
                "limits": {"seconds": self.timeout, "memory_mib": self.memory_mib, "cpu": self.cpu},
                "not_applied": {}}

    def manifests(self, check_id: str, notebook: bytes, *, name: str, allow_overfit: bool) -> list[dict]:
        """The ConfigMap carrying the upload and the Job checking it, in the order to create them."""
        packed = gzip.compress(notebook, mtime=0)
        if len(packed) > _MAX_UPLOAD:
            raise OrchestratorError(f"the notebook is {len(packed):,} bytes compressed: too big for the sandbox "
                                    "(1 MiB); clear its outputs or move data it embeds to files it reads")
        job = f"farm-check-{check_id[:20]}"
        labels = {"app.kubernetes.io/name": "farm-sandbox", "app.kubernetes.io/component": "sandbox",
                  "app.kubernetes.io/part-of": "the-farm", CHECK_LABEL: check_id[:63]}
        meta = {"name": job, "namespace": self.namespace, "labels": labels}
        config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                  "binaryData": {"notebook.ipynb.gz": base64.b64encode(packed).decode()}}
        command = ["python", "-m", "farmkit.api.sandbox", "check", "/upload/notebook.ipynb.gz", "--name", name]
        if allow_overfit:
            command.append("--allow-overfit")
        env = {"HOME": "/tmp", "TMPDIR": "/tmp", "FARM_HOME": "/var/lib/farm", "FARM_REDIS": "off",
               "FARM_PROGRESS": "off", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
        container = {
            "name": "check", "image": self.image, "imagePullPolicy": "Always", "command": command,
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "256Mi"},
                          "limits": {"cpu": self.cpu, "memory": f"{self.memory_mib}Mi", "ephemeral-storage": "2Gi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "upload", "mountPath": "/upload", "readOnly": True},
                             {"name": "farm-home", "mountPath": "/var/lib/farm"}, {"name": "tmp", "mountPath": "/tmp"}]}
        pod = {
            "restartPolicy": "Never", "runtimeClassName": self.runtime_class,
            "serviceAccountName": self.service_account, "automountServiceAccountToken": False,
            "enableServiceLinks": False, "hostNetwork": False, "hostPID": False, "hostIPC": False,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "upload", "configMap": {"name": job, "defaultMode": 0o444}},
                        {"name": "farm-home", "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]}
        spec = {"backoffLimit": 0, "activeDeadlineSeconds": int(self.timeout), "ttlSecondsAfterFinished": 3600,
                "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}
        return [config, {"apiVersion": "batch/v1", "kind": "Job", "metadata": dict(meta), "spec": spec}]

    def start(self, check_id: str, notebook: bytes, *, name: str, allow_overfit: bool) -> str:
        """Create the check's ConfigMap and Job; the Job's name."""
        config, job = self.manifests(check_id, notebook, name=name, allow_overfit=allow_overfit)
        self.core.create_namespaced_config_map(namespace=self.namespace, body=config)
        self.batch.create_namespaced_job(namespace=self.namespace, body=job)
        return job["metadata"]["name"]

    def finished(self, job: str) -> str | None:
        """``succeeded``, ``failed``, ``deadline`` (its time limit ended it), or None while it runs."""
        status = self.batch.read_namespaced_job(job, self.namespace).status
        if status is None:
            return None
        if any(c.type == "Failed" and c.status == "True" and c.reason == "DeadlineExceeded"
               for c in status.conditions or ()):
            return "deadline"
        if (status.succeeded or 0) > 0:
            return "succeeded"
        return "failed" if (status.failed or 0) > 0 else None

    def collect(self, job: str, check_id: str) -> str:
        """The log of the Job's pod (empty when it has none), then the Job, its pod and ConfigMap deleted."""
        from kubernetes.client.exceptions import ApiException
        text = ""
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{CHECK_LABEL}={check_id[:63]}")
            for pod in pods.items:
                text = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace) or text
        finally:
            for delete, kwargs in ((self.batch.delete_namespaced_job, {"propagation_policy": "Background"}),
                                   (self.core.delete_namespaced_config_map, {})):
                try:
                    delete(name=job, namespace=self.namespace, **kwargs)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        return text

    def check(self, check_id: str, notebook: bytes, *, name: str, allow_overfit: bool) -> SandboxRun:
        """Run one check to its end: start, wait (at most the time limit and a minute), collect."""
        job = self.start(check_id, notebook, name=name, allow_overfit=allow_overfit)
        deadline, state = time.monotonic() + self.timeout + 60, None
        try:
            while state is None and time.monotonic() < deadline:
                state = self.finished(job)
                if state is None:
                    time.sleep(self.poll)
        finally:
            result, output = sandbox_output(self.collect(job, check_id))
        return SandboxRun(result=result, exit_code={"succeeded": 0, "failed": 1}.get(state),
                          timed_out=state in (None, "deadline"), output=output, isolation=self.isolation)


def open_orchestrator(spec: str, settings: Settings, agents, *, runner_image: str | None = None) -> Orchestrator:
    """``local`` (a child process per agent) or ``kubernetes[://NAMESPACE]`` (agents' pods run
    ``runner_image``, default :data:`farmkit.ops.deploy.DEFAULT_IMAGE`)."""
    if spec == "local":
        return LocalProcessOrchestrator(settings, agents)
    if spec == "kubernetes" or spec.startswith("kubernetes://"):
        return KubernetesOrchestrator(agents, spec.removeprefix("kubernetes").removeprefix("://") or "default",
                                      render_options={"image": runner_image} if runner_image else None)
    raise ConfigError(f"unknown orchestrator {spec!r}; known: local, kubernetes://NAMESPACE")
