"""checkov on k8s/ (the files and every rendered overlay and agent) and terraform/: no failed check
beyond the exceptions listed, each with its reason, in .checkov.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess

import yaml

from farmkit.ops import deploy
from tests.conftest import need
from tests.deploy.manifests import KUSTOMIZATIONS, ROOT, kubectl, kustomize

CONFIG = ROOT / ".checkov.yaml"
AGENT = ROOT / "agents" / "sma-crossover"


def checkov_binary() -> str | None:
    # bin/test installs it into its own virtualenv: its pins clash with the main stack
    local = ROOT / ".venv-checkov" / "bin" / "checkov"
    return str(local) if local.exists() else shutil.which("checkov")


def run_checkov(*args: str) -> list[dict]:
    binary = checkov_binary()
    need(binary is not None, "checkov is not installed (bin/test puts it in .venv-checkov)")
    out = subprocess.run([binary, "--config-file", str(CONFIG), "-o", "json", *args], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode in (0, 1), f"checkov could not run:\n{out.stderr[-3000:]}"
    reports, decoder, text, i = [], json.JSONDecoder(), out.stdout, 0
    while True:   # one JSON document per framework, sometimes a list of them
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        report, i = decoder.raw_decode(text, i)
        reports += report if isinstance(report, list) else [report]
    return reports


def failures(reports: list[dict]) -> list[str]:
    return [f"{f['check_id']} {f['check_name']}: {f['resource']} ({f['file_path']})"
            for r in reports if isinstance(r, dict) and "results" in r for f in r["results"]["failed_checks"]]


def test_every_exception_has_its_reason():
    text = CONFIG.read_text()
    skipped = yaml.safe_load(text)["skip-check"]
    assert skipped
    lines = text.splitlines()
    for check in skipped:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        above = lines[index - 1].strip()
        assert above.startswith("#") or above.startswith("- CKV"), f"{check} has no reason above it"


def test_terraform_passes_checkov():
    reports = run_checkov("-d", str(ROOT / "terraform"), "--framework", "terraform")
    assert sum(r["summary"]["passed"] for r in reports if "summary" in r) > 50
    assert not failures(reports), "\n".join(failures(reports))


def test_kubernetes_files_pass_checkov():
    reports = run_checkov("-d", str(ROOT / "k8s"), "--framework", "kubernetes")
    assert not failures(reports), "\n".join(failures(reports))


def test_rendered_overlays_and_agents_pass_checkov(tmp_path):
    need(kubectl() is not None, "kubectl is not on PATH (it renders kustomize offline)")
    for folder in KUSTOMIZATIONS:
        (tmp_path / (folder.replace("/", "-") + ".yaml")).write_text(yaml.safe_dump_all(kustomize(folder)))
    (tmp_path / "farm-deploy.yaml").write_text(deploy.to_yaml(deploy.render_agent(AGENT)))
    reports = run_checkov("-d", str(tmp_path), "--framework", "kubernetes")
    assert sum(r["summary"]["resource_count"] for r in reports if "summary" in r) >= 30
    assert not failures(reports), "\n".join(failures(reports))


def test_checkov_catches_an_insecure_pod(tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "farm"},
           "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}]}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(pod))
    found = failures(run_checkov("-d", str(tmp_path), "--framework", "kubernetes"))
    assert any(line.startswith("CKV_K8S_16 ") for line in found), found   # privileged container
