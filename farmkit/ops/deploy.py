"""Kubernetes manifests of a promoted agent, ``farm deploy``, and the sweep shards an Indexed Job runs.

An agent's manifests are the template files in ``k8s/base/agent/`` (the ones ``kubectl kustomize``
renders) filled from ``agents/NAME/agent.yaml``: names, namespace, image, resources, warm-up, and a
ConfigMap carrying the agent's manifest and notebook, mounted read-only where the runner reads it.

    docs = render_agent("agents/sma-crossover", image="us-central1-docker.pkg.dev/p/farm/runner:0.1.0",
                        namespace="farm", project="p")
    print(to_yaml(docs))      # what `farm deploy agents/sma-crossover --dry-run` prints

The rendered objects rely on the shared base (``kubectl apply -k k8s/overlays/prod``): the ServiceAccount
``farm-agent``, the ConfigMap ``farm-config`` (FARM_BUS, FARM_STORE, FARM_REDIS) and the NetworkPolicies.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from farmkit.version import __version__
from farmkit.errors import FarmError

__all__ = ["DEFAULT_IMAGE", "TEMPLATE_NAME", "DeployError", "apply", "main", "register", "render_agent",
           "run_shard", "shard_points", "templates_dir", "to_yaml"]

TEMPLATE_NAME = "agent-template"           # the placeholder name in k8s/base/agent/*.yaml
DEFAULT_IMAGE = f"farm-runner:{__version__}"
_AGENT_TEMPLATES = Path("k8s") / "base" / "agent"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 52          # a StatefulSet's pods carry "NAME-<10-char hash>" labels, limited to 63 characters
_MAX_CONFIGMAP = 1_000_000   # Kubernetes refuses ConfigMaps over 1 MiB


class DeployError(FarmError, RuntimeError):
    """An agent cannot be rendered or applied; the message says what to fix."""


def templates_dir(path: str | Path | None = None) -> Path:
    """The folder of the agent templates: ``path`` if given, else ``k8s/base/agent`` of the source
    checkout this module belongs to, else ``k8s/base/agent`` under the working directory (the API
    image copies it to ``/app/k8s/base/agent`` and runs in ``/app``)."""
    candidates = [Path(path)] if path else [Path(__file__).resolve().parents[1] / _AGENT_TEMPLATES,
                                            Path.cwd() / _AGENT_TEMPLATES]
    for folder in candidates:
        if (folder / "kustomization.yaml").is_file():
            return folder
    raise DeployError("cannot find the agent templates (a kustomization.yaml and its files) in "
                      + " or ".join(str(c) for c in candidates)
                      + "; run from the repository's root or pass templates=PATH (--templates)")


def render_agent(agent_dir: str | Path, *, image: str | None = None, namespace: str = "farm",
                 project: str | None = None, dataset: str = "farm", storage: str = "1Gi",
                 templates: str | Path | None = None) -> list[dict]:
    """The Kubernetes objects of one agent, from ``AGENT_DIR/agent.yaml`` and the templates in
    ``k8s/base/agent/``: a ConfigMap (agent.yaml and the notebook), a headless Service and a StatefulSet.

    ``image`` is the runner image (default: the one ``agent.yaml`` pins, by digest when ``farm promote``
    was given one, else ``DEFAULT_IMAGE``); ``namespace`` where the shared base is applied; ``project`` (optional)
    pins FARM_BUS=pubsub://PROJECT and FARM_STORE=bigquery://PROJECT/DATASET on the pod, which otherwise
    takes them from the ConfigMap ``farm-config``; ``storage`` is the size of the checkpoint volume.
    Raises :class:`DeployError` naming what to fix (no agent.yaml, a notebook changed since promotion,
    a name Kubernetes would refuse). The objects are plain dicts, in the order to apply them.

    >>> [d["kind"] for d in render_agent("agents/sma-crossover")]
    ['ConfigMap', 'Service', 'StatefulSet']
    """
    agent_dir = Path(agent_dir)
    manifest_path = agent_dir / "agent.yaml"
    if not manifest_path.is_file():
        raise DeployError(f"{agent_dir} has no agent.yaml; promote a notebook first "
                          "(farm promote NOTEBOOK --name NAME) and pass its folder, e.g. agents/NAME")
    manifest_text = manifest_path.read_text(encoding="utf-8")
    manifest = yaml.safe_load(manifest_text) or {}
    name = manifest.get("name")
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME.match(name):
        raise DeployError(f"{manifest_path}: name {name!r} cannot name a StatefulSet; use lowercase letters, "
                          f"digits and dashes, at most {_MAX_NAME} characters")
    notebook = agent_dir / manifest.get("notebook", "agent.ipynb")
    if not notebook.is_file():
        raise DeployError(f"{manifest_path} names notebook {notebook.name}, which is not in {agent_dir}")
    notebook_bytes = notebook.read_bytes()
    digest = hashlib.sha256(notebook_bytes).hexdigest()
    if manifest.get("notebook_sha256") and manifest["notebook_sha256"] != digest:
        raise DeployError(f"{notebook} changed since it was promoted (its sha256 is not the one in agent.yaml); "
                          f"promote the research notebook again: farm promote NOTEBOOK --name {name} --force")
    if len(notebook_bytes) + len(manifest_text.encode()) > _MAX_CONFIGMAP:
        raise DeployError(f"{notebook} is {len(notebook_bytes):,} bytes: too big for a ConfigMap (1 MiB); "
                          "clear its outputs or move data it embeds to files it reads")

    image = image or (manifest.get("image") or {}).get("runner") or DEFAULT_IMAGE
    docs = _fill(_load_templates(templates_dir(templates)), name)
    labels = {"app.kubernetes.io/part-of": "the-farm", "app.kubernetes.io/version": str(manifest.get(
        "farmkit_version", __version__))}
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        doc["metadata"].setdefault("labels", {}).update(labels)
        kind = doc["kind"]
        if kind == "ConfigMap":
            doc["data"] = {"agent.yaml": manifest_text, manifest.get("notebook", "agent.ipynb"):
                           notebook_bytes.decode("utf-8")}
        elif kind == "StatefulSet":
            _fill_statefulset(doc, manifest, image=image, project=project, dataset=dataset, storage=storage,
                              digest=digest, labels=labels)
    return docs


def _load_templates(folder: Path) -> list[dict]:
    # The files kustomize would render, in the order its kustomization lists them.
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    docs = []
    for resource in kustomization.get("resources", []):
        docs += [d for d in yaml.safe_load_all((folder / resource).read_text(encoding="utf-8")) if d]
    if not any(d.get("kind") == "StatefulSet" for d in docs):
        raise DeployError(f"{folder}: the agent templates hold no StatefulSet")
    return docs


def _fill(node, name: str):
    if isinstance(node, dict):
        return {k: _fill(v, name) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, name) for v in node]
    if isinstance(node, str):
        return node.replace(TEMPLATE_NAME, name)
    return node


def _fill_statefulset(doc: dict, manifest: dict, *, image: str, project: str | None, dataset: str,
                      storage: str, digest: str, labels: dict) -> None:
    pod = doc["spec"]["template"]
    pod["metadata"].setdefault("labels", {}).update(labels)
    # A new notebook changes the ConfigMap, which alone would not restart the pod: this does.
    pod["metadata"].setdefault("annotations", {})["farm.dev/notebook-sha256"] = digest
    container = pod["spec"]["containers"][0]
    container["image"] = image
    resources = manifest.get("resources")
    if resources:
        unknown = sorted(set(resources) - {"requests", "limits"})
        if unknown:
            raise DeployError(f"agent.yaml resources: unknown key(s) {', '.join(unknown)}; "
                              "use requests and limits (cpu, memory)")
        container["resources"] = copy.deepcopy(resources)
    env = {e["name"]: e for e in container.get("env", [])}
    if manifest.get("warmup_bars"):
        env["FARM_WARMUP_BARS"] = {"name": "FARM_WARMUP_BARS", "value": str(int(manifest["warmup_bars"]))}
    if project:
        env["FARM_BUS"] = {"name": "FARM_BUS", "value": f"pubsub://{project}"}
        env["FARM_STORE"] = {"name": "FARM_STORE", "value": f"bigquery://{project}/{dataset}"}
    container["env"] = list(env.values())
    for claim in doc["spec"].get("volumeClaimTemplates", []):
        claim["spec"]["resources"]["requests"]["storage"] = storage


def to_yaml(docs: list[dict]) -> str:
    """The objects as one multi-document YAML stream (what ``kubectl apply -f -`` reads)."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120)


def apply(docs: list[dict], *, kubectl: str = "kubectl", run: Callable = subprocess.run) -> int:
    """``kubectl apply -f -`` with the objects on stdin; returns kubectl's exit code."""
    binary = shutil.which(kubectl)
    if binary is None:
        raise DeployError(f"{kubectl} not found on PATH: install kubectl and point it at the cluster "
                          "(gcloud container clusters get-credentials CLUSTER), or use --dry-run to print "
                          "the manifests")
    return run([binary, "apply", "-f", "-"], input=to_yaml(docs), text=True).returncode


def register(subparsers) -> None:
    """Add ``deploy`` to an argparse subparsers object (``farm deploy AGENT_DIR [--dry-run]``)."""
    parser = subparsers.add_parser(
        "deploy", help="deploy an agent to Kubernetes (or print its manifests with --dry-run)",
        description="Render the agent's ConfigMap, Service and StatefulSet from its agent.yaml and the "
                    "templates in k8s/base/agent/, then apply them with kubectl (the shared base, "
                    "k8s/overlays/ENV, must be applied in the namespace first).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  farm deploy agents/sma-crossover --dry-run\n"
               "  farm deploy agents/sma-crossover --namespace farm-dev "
               "--image us-central1-docker.pkg.dev/my-project/farm/runner:0.1.0")
    parser.add_argument("agent_dir", help="the agent folder (agent.ipynb + agent.yaml), e.g. agents/sma-crossover")
    parser.add_argument("--dry-run", action="store_true", help="print the manifests instead of applying them")
    parser.add_argument("--image", help=f"runner image (default: the one agent.yaml pins, else {DEFAULT_IMAGE})")
    parser.add_argument("--namespace", default="farm", help="namespace of the shared base (default farm)")
    parser.add_argument("--project", help="GCP project: pins FARM_BUS and FARM_STORE on the pod "
                                          "(default: the farm-config ConfigMap's)")
    parser.add_argument("--dataset", default="farm", help="BigQuery dataset with --project (default farm)")
    parser.add_argument("--storage", default="1Gi", help="size of the checkpoint volume (default 1Gi)")
    parser.add_argument("--templates", help="folder of the agent templates (default k8s/base/agent)")
    parser.set_defaults(handler=_deploy)


def _deploy(args: argparse.Namespace) -> int:
    docs = render_agent(args.agent_dir, image=args.image, namespace=args.namespace, project=args.project,
                        dataset=args.dataset, storage=args.storage, templates=args.templates)
    if args.dry_run:
        sys.stdout.write(to_yaml(docs))
        return 0
    return apply(docs)


# -- sweeps as Indexed Jobs (k8s/base/sweep/job.yaml) --------------------------------------------------

def shard_points(points: list[dict], index: int, shards: int) -> list[dict]:
    """The grid points shard ``index`` of ``shards`` runs: every ``shards``-th point from ``index``, so
    shards differ in size by at most one and together cover the grid once.

    >>> shard_points([{"fast": 5}, {"fast": 10}, {"fast": 20}], 1, 2)
    [{'fast': 10}]
    """
    if shards < 1 or not 0 <= index < shards:
        raise DeployError(f"shard index {index} is not in 0..{shards - 1} (JOB_COMPLETION_INDEX must be below "
                          "--shards, which must equal the Job's completions)")
    return points[index::shards]


def run_shard(notebook: str | Path, grid: dict[str, list], *, index: int, shards: int, sweep_id: str,
              settings=None) -> list[dict]:
    """Run this shard's trials of a notebook sweep, each a registered run under ``sweep_id``; returns
    one row per trial (the point, run_id, status, error). A failing trial does not stop the others."""
    from farmkit.research import notebooks

    points = shard_points(notebooks.grid_points(notebook, grid), index, shards)
    rows = []
    for point in points:
        try:
            run = notebooks.run(notebook, point, settings=settings, progress=False, sweep_id=sweep_id)
            rows.append({**point, "run_id": run.run_id, "status": run.status, "error": None})
        except notebooks.NotebookError as exc:
            rows.append({**point, "run_id": exc.run_id, "status": "failed", "error": str(exc)})
    return rows


def main(argv: list[str] | None = None, environ=None) -> int:
    """``python -m farmkit.ops.deploy shard NOTEBOOK --grid NAME=V1,V2 ... --shards N --sweep-id ID``:
    one index of a sweep's Indexed Job (the index comes from JOB_COMPLETION_INDEX)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m farmkit.ops.deploy", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    shard = sub.add_parser("shard", help="run one shard of a notebook sweep (a pod of an Indexed Job)")
    shard.add_argument("notebook")
    shard.add_argument("--grid", action="append", default=[], required=True, metavar="NAME=V1,V2,...")
    shard.add_argument("--shards", type=int, required=True, help="number of shards (the Job's completions)")
    shard.add_argument("--index", type=int, help="this shard (default: JOB_COMPLETION_INDEX)")
    shard.add_argument("--sweep-id", required=True, help="the sweep's id (the Job's name)")
    args = parser.parse_args(argv)
    index = args.index
    if index is None:
        if not str(environ.get("JOB_COMPLETION_INDEX", "")).isdigit():
            print("python -m farmkit.ops.deploy shard: no --index and no JOB_COMPLETION_INDEX (set by an Indexed Job)",
                  file=sys.stderr)
            return 2
        index = int(environ["JOB_COMPLETION_INDEX"])
    grid = {}
    for item in args.grid:
        name, sep, values = item.partition("=")
        if not sep or not name.strip():
            print(f"--grid expects NAME=V1,V2,... (e.g. fast=5,10,20), got {item!r}", file=sys.stderr)
            return 2
        grid[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    try:
        rows = run_shard(args.notebook, grid, index=index, shards=args.shards, sweep_id=args.sweep_id)
    except FarmError as exc:
        print(f"python -m farmkit.ops.deploy shard: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row, default=str))
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
