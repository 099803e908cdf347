"""Rendering the repository's Kubernetes manifests for the deploy tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# Every folder kustomize can render: the overlays, the shared base and the two templates.
KUSTOMIZATIONS = ["overlays/dev", "overlays/prod", "base", "base/agent", "base/sweep"]
KUBERNETES_VERSION = "1.32.0"


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize(folder: str) -> list[dict]:
    """``kubectl kustomize k8s/FOLDER`` (offline) as a list of objects."""
    out = subprocess.run([kubectl(), "kustomize", str(K8S / folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize k8s/{folder} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every workload among the objects."""
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            found.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]))
    return found
