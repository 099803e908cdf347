"""k8s/ and `farm deploy`: kustomize renders every overlay offline, every object passes
kubernetes-validate --strict for Kubernetes 1.32, and the workloads keep the security and sizing rules."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import os
import shutil
import stat

import pytest
import yaml

from farmkit.ops import deploy
from tests.conftest import need
from tests.deploy.manifests import K8S, KUBERNETES_VERSION, KUSTOMIZATIONS, ROOT, kubectl, kustomize, pod_specs

AGENT = ROOT / "agents" / "sma-crossover"


@pytest.fixture(scope="module")
def validate():
    try:
        import kubernetes_validate
    except ImportError:
        need(False, "kubernetes-validate is not installed (pip install -e '.[test]')")

    def check(doc: dict) -> None:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')}: {exc.message} "
                                 f"at {'/'.join(map(str, exc.path))}") from None
    return check


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    need(kubectl() is not None, "kubectl is not on PATH (it renders kustomize offline)")
    return {folder: kustomize(folder) for folder in KUSTOMIZATIONS}


def dry_run(*args: str) -> list[dict]:
    """`farm deploy ... --dry-run` through the parser deploy.register adds, its stdout parsed."""
    parser = argparse.ArgumentParser(prog="farm")
    deploy.register(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["deploy", *args, "--dry-run"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert parsed.handler(parsed) == 0
    return [d for d in yaml.safe_load_all(out.getvalue()) if d]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_every_kustomization_is_valid_for_kubernetes_1_32(rendered, validate, folder):
    docs = rendered[folder]
    assert docs
    for doc in docs:
        validate(doc)


def test_the_validator_rejects_what_kubernetes_would(validate):
    bad = yaml.safe_load((K8S / "base/api/service.yaml").read_text())
    bad["spec"]["portz"] = bad["spec"].pop("ports")
    with pytest.raises(AssertionError, match="portz"):
        validate(bad)


def test_farm_deploy_dry_run_is_valid_for_kubernetes_1_32(validate):
    docs = dry_run(str(AGENT), "--namespace", "farm-dev", "--project", "my-project",
                   "--image", "us-central1-docker.pkg.dev/my-project/farm/runner:0.1.0")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "StatefulSet"]
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["namespace"] == "farm-dev"
        assert deploy.TEMPLATE_NAME not in yaml.safe_dump(doc)


def test_an_agent_is_rendered_from_its_manifest():
    manifest = yaml.safe_load((AGENT / "agent.yaml").read_text())
    config, service, sts = deploy.render_agent(AGENT, image="registry.example/runner:1", project="p", dataset="d")
    assert config["data"]["agent.yaml"] == (AGENT / "agent.yaml").read_text()
    assert config["data"]["agent.ipynb"] == (AGENT / "agent.ipynb").read_text()
    assert sts["metadata"]["name"] == service["metadata"]["name"] == sts["spec"]["serviceName"] == "sma-crossover"
    pod = sts["spec"]["template"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    runner = pod["spec"]["containers"][0]
    assert runner["image"] == "registry.example/runner:1"
    assert runner["resources"] == manifest["resources"]
    env = {e["name"]: e.get("value") for e in runner["env"]}
    assert env["FARM_AGENT_ID"] == "sma-crossover"
    assert env["FARM_SUBSCRIPTION"] == "agent-sma-crossover"
    assert env["FARM_WARMUP_BARS"] == str(manifest["warmup_bars"])
    assert env["FARM_BUS"] == "pubsub://p" and env["FARM_STORE"] == "bigquery://p/d"
    # the runner reads its agent folder from the ConfigMap and keeps its state on the claim
    mounts = {m["name"]: m["mountPath"] for m in runner["volumeMounts"]}
    assert runner["args"][0] == mounts["agent"]
    assert env["FARM_STATE_DIR"] == mounts["state"]
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["agent"]["configMap"]["name"] == config["metadata"]["name"]


def test_an_agents_own_resources_and_volume_size_are_used(tmp_path):
    agent = tmp_path / "fast-one"
    shutil.copytree(AGENT, agent)
    manifest = yaml.safe_load((agent / "agent.yaml").read_text())
    manifest["name"] = "fast-one"
    manifest["resources"] = {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}}
    (agent / "agent.yaml").write_text(yaml.safe_dump(manifest))
    *_, sts = deploy.render_agent(agent, storage="5Gi")
    assert sts["metadata"]["name"] == "fast-one"
    assert sts["spec"]["template"]["spec"]["containers"][0]["resources"] == manifest["resources"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_an_agent_pinned_to_an_image_digest_deploys_that_image(tmp_path):
    agent = tmp_path / "pinned"
    shutil.copytree(AGENT, agent)
    manifest = yaml.safe_load((agent / "agent.yaml").read_text())
    manifest["name"] = "pinned"
    pinned = "europe-docker.pkg.dev/p/farm/runner@sha256:" + "cd" * 32
    manifest["image"] = {"runner": pinned, "digest": pinned.split("@")[1]}
    (agent / "agent.yaml").write_text(yaml.safe_dump(manifest))
    *_, sts = deploy.render_agent(agent)
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == pinned
    *_, sts = deploy.render_agent(agent, image="registry.example/runner:2")   # said explicitly: that one
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/runner:2"


def test_render_agent_says_what_to_fix(tmp_path):
    with pytest.raises(deploy.DeployError, match="no agent.yaml; promote a notebook first"):
        deploy.render_agent(tmp_path)
    agent = tmp_path / "changed"
    shutil.copytree(AGENT, agent)
    with (agent / "agent.ipynb").open("a") as f:
        f.write("\n")
    with pytest.raises(deploy.DeployError, match="changed since it was promoted"):
        deploy.render_agent(agent)
    with pytest.raises(deploy.DeployError, match="cannot find the agent templates"):
        deploy.render_agent(AGENT, templates=tmp_path / "nowhere")


def test_deploy_without_kubectl_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(deploy.DeployError, match="kubectl not found on PATH.*--dry-run"):
        deploy.apply(deploy.render_agent(AGENT))


def test_deploy_pipes_the_manifests_to_kubectl_apply(monkeypatch, tmp_path):
    # A stand-in kubectl that records its arguments and stdin: no cluster exists here.
    got = tmp_path / "got"
    fake = tmp_path / "kubectl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {got}.args\ncat > {got}.stdin\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    docs = deploy.render_agent(AGENT)
    assert deploy.apply(docs) == 0
    assert (tmp_path / "got.args").read_text().split() == ["apply", "-f", "-"]
    assert list(yaml.safe_load_all((tmp_path / "got.stdin").read_text())) == docs


def all_pods(rendered) -> list[tuple[str, str, dict]]:
    agent = deploy.render_agent(AGENT)
    return [(folder, name, pod) for folder, docs in [*rendered.items(), ("farm deploy", agent)]
            for name, pod in pod_specs(docs)]


def test_pods_run_as_non_root_read_only_without_capabilities(rendered):
    pods = all_pods(rendered)
    assert {name for _, name, _ in pods} >= {"StatefulSet/ingester", "Deployment/api", "Job/sweep-template",
                                             "StatefulSet/sma-crossover"}
    for folder, name, pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, (folder, name)
        assert spec["securityContext"]["runAsUser"] >= 10000, (folder, name)
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", (folder, name)
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (folder, name)
            assert sc["allowPrivilegeEscalation"] is False, (folder, name)
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), (folder, name)
            assert c["resources"]["requests"] and c["resources"]["limits"], (folder, name)
            # read-only root: every process writes to /tmp (HOME) and FARM_HOME, both volumes
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert "/tmp" in mounts and env.get("HOME") == "/tmp", (folder, name)
            assert env.get("FARM_HOME") in mounts, (folder, name)
            if not name.startswith("Job/"):   # services: probed on the health endpoints
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", (folder, name)
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", (folder, name)
        # Only the API talks to the Kubernetes API.
        assert spec["automountServiceAccountToken"] is name.startswith("Deployment/api"), (folder, name)


def test_service_accounts_use_workload_identity_and_mount_no_token(rendered):
    for folder in ("overlays/dev", "overlays/prod", "base"):
        accounts = {d["metadata"]["name"]: d for d in rendered[folder] if d["kind"] == "ServiceAccount"}
        sandbox = accounts.pop("farm-sandbox", None)
        assert set(accounts) == {"farm-ingester", "farm-agent", "farm-sweep", "farm-api"}
        assert (sandbox is not None) is folder.startswith("overlays/")
        if sandbox is not None:     # the checks of uploaded notebooks: no Google account, no token
            assert not sandbox["metadata"].get("annotations") and sandbox["automountServiceAccountToken"] is False
        for name, sa in accounts.items():
            gsa = sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
            assert gsa.endswith(".iam.gserviceaccount.com")
            assert gsa.startswith("farm-api@" if name == "farm-api" else "farm-workloads@")
            assert sa["automountServiceAccountToken"] is False
        used = {pod["spec"]["serviceAccountName"] for _, pod in pod_specs(rendered[folder])}
        assert used <= set(accounts)


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_ingester_has_one_replica_per_shard(rendered, overlay):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered[overlay]}
    sts = docs["StatefulSet", "ingester"]
    shards = int(docs["ConfigMap", "farm-ingester"]["data"]["FARM_INGEST_SHARD_COUNT"])
    assert 2 <= sts["spec"]["replicas"] == shards <= 10
    # the shard index is the pod's ordinal, read from HOSTNAME: nothing may pin it
    env = sts["spec"]["template"]["spec"]["containers"][0].get("env", [])
    assert "FARM_INGEST_SHARD_INDEX" not in {e["name"] for e in env}
    assert "FARM_INGEST_SHARD_INDEX" not in docs["ConfigMap", "farm-ingester"]["data"]
    pdb = docs["PodDisruptionBudget", "ingester"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    hpa = docs["HorizontalPodAutoscaler", "api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "api" and hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert docs["Service", "api"]["spec"]["selector"].items() <= \
        docs["Deployment", "api"]["spec"]["template"]["metadata"]["labels"].items()
    namespace = sts["metadata"]["namespace"]
    assert docs["RoleBinding", "farm-api-agents"]["subjects"][0]["namespace"] == namespace
    # the API deploys agents into the namespace its Role covers, with the settings it knows
    api = docs["ConfigMap", "farm-api"]["data"]
    assert api["FARM_API_ORCHESTRATOR"] == f"kubernetes://{namespace}"
    # agents' pods come from the API's registry, at the API's tag
    api_image = docs["Deployment", "api"]["spec"]["template"]["spec"]["containers"][0]["image"]
    registry, tag = api_image.rsplit("/", 1)[0], api_image.rsplit(":", 1)[1]
    assert api["FARM_API_RUNNER_IMAGE"] == f"{registry}/runner:{tag}"
    assert docs["Role", "farm-api-agents"]["metadata"]["namespace"] == namespace
    from farmkit.api.settings import ApiSettings
    ApiSettings.from_env(api)


def test_agent_gets_time_to_stop_cleanly():
    *_, sts = deploy.render_agent(AGENT)
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    grace = float(args[args.index("--grace") + 1])
    # runner.service.Runner.shutdown: the stop request, then an interrupt and up to max(5, grace / 2) more
    needed = grace + max(5.0, grace / 2)
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > needed


def test_sweep_job_runs_one_grid_shard_per_index(rendered):
    (job,) = [d for d in rendered["base/sweep"] if d["kind"] == "Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    assert container["command"] == ["python", "-m", "farmkit.ops.deploy", "shard"]
    assert int(args[args.index("--shards") + 1]) == spec["completions"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SWEEP_ID"]["valueFrom"]["fieldRef"]["fieldPath"].endswith("job-name']")
    config = yaml.safe_load_all((K8S / "base/config.yaml").read_text())
    assert next(config)["data"]["FARM_STORE"].startswith("bigquery://")


def _egress_peers(policies: list[dict], labels: dict) -> list[dict]:
    def selects(selector: dict) -> bool:
        if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] == "In"
            if labels.get(expr["key"]) not in expr["values"]:
                return False
        return True

    peers = []
    for policy in policies:
        if "Egress" in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"]):
            for rule in policy["spec"].get("egress", []):
                assert rule.get("to"), f"{policy['metadata']['name']}: an egress rule without 'to' allows everything"
                peers += [{**peer, "ports": rule.get("ports")} for peer in rule["to"]]
    return peers


def test_agents_reach_only_google_apis_redis_and_dns(rendered):
    policies = [d for d in rendered["overlays/prod"] if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("egress")
            and not p["spec"].get("ingress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    *_, sts = deploy.render_agent(AGENT)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    allowed = {"199.36.153.8/30": 443, "169.254.169.254/32": 80, "169.254.169.252/32": 988,
               "10.30.0.0/29": 6378, "169.254.20.10/32": 53}
    for peer in _egress_peers(policies, labels):
        ports = {p["port"] for p in peer["ports"]}
        if "ipBlock" in peer:
            assert peer["ipBlock"]["cidr"] in allowed and ports == {allowed[peer["ipBlock"]["cidr"]]}, peer
            assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).num_addresses <= 8
        else:   # kube-dns pods
            assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"} and ports == {53}, peer
    cidrs = {p["ipBlock"]["cidr"] for p in _egress_peers(policies, labels) if "ipBlock" in p}
    assert {"199.36.153.8/30", "10.30.0.0/29"} <= cidrs
    # the ingester may reach Alpaca; an agent may not reach the internet
    ingester = _egress_peers(policies, {"app.kubernetes.io/component": "ingester"})
    assert any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for p in ingester)
    assert "10.30.0.0/29" not in {p.get("ipBlock", {}).get("cidr") for p in ingester}


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_the_archive_runs_farm_archive_on_the_ingester_image(rendered, overlay):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered[overlay]}
    archive = docs["Deployment", "archive"]["spec"]["template"]["spec"]
    ingester = docs["StatefulSet", "ingester"]["spec"]["template"]["spec"]
    container = archive["containers"][0]
    assert container["image"] == ingester["containers"][0]["image"]
    assert container["command"] == ["python", "-m", "farmkit.cli", "archive"]
    assert archive["serviceAccountName"] == "farm-ingester"    # Pub/Sub subscriber, BigQuery writer
    from farmkit.cli import command
    group = command()
    assert group.get_command(group.make_context("farm", ["--help"], resilient_parsing=True),
                             container["command"][3]).name == "archive"


# --- the sandbox of uploaded notebooks --------------------------------------------------------------------

@pytest.mark.parametrize("overlay, farm, sandbox", [("overlays/dev", "farm-dev", "farm-dev-sandbox"),
                                                     ("overlays/prod", "farm", "farm-sandbox")])
def test_the_sandbox_is_a_namespace_of_its_own_with_no_egress(rendered, overlay, farm, sandbox):
    docs = rendered[overlay]
    namespaces = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Namespace"}
    assert set(namespaces) == {farm, sandbox}
    assert namespaces[sandbox]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    inside = [d for d in docs if d["metadata"].get("namespace") == sandbox]
    assert {d["kind"] for d in inside} == {"NetworkPolicy", "ServiceAccount", "Role", "RoleBinding", "ResourceQuota",
                                           "LimitRange"}
    (policy,) = [d for d in inside if d["kind"] == "NetworkPolicy"]
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}   # nothing in, nothing out
    # The API creates Jobs in the sandbox and nowhere else; no Role anywhere reads Secrets.
    api = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}["farm-api"]["data"]
    assert api["FARM_API_SANDBOX"] == f"kubernetes://{sandbox}"
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"}
    creates_jobs = {ns for (ns, _), role in roles.items() for rule in role["rules"]
                    if "batch" in rule["apiGroups"] and "jobs" in rule["resources"] and "create" in rule["verbs"]}
    assert creates_jobs == {sandbox}
    assert not any("secrets" in rule["resources"] for role in roles.values() for rule in role["rules"])
    (binding,) = [d for d in inside if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] in {name for ns, name in roles if ns == sandbox}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "farm-api", "namespace": farm}]
    assert {d["kind"] for d in docs if d["kind"] == "ClusterRoleBinding"} == set()


def test_a_sandbox_job_has_no_credentials_no_token_and_runs_on_gvisor(rendered, validate):
    from farmkit.ops.orchestrators import KubernetesSandbox
    # No cluster here: the API clients are never called to build the manifests.
    sandbox = KubernetesSandbox("farm-sandbox", image="us-central1-docker.pkg.dev/my-project/farm/runner:0.1.0",
                                timeout=600, memory_mib=4096, batch=object(), core=object())
    notebook = (AGENT / "agent.ipynb").read_bytes()
    config, job = sandbox.manifests("0123456789abcdef0123456789abcdef", notebook, name="sma-cross",
                                    allow_overfit=True)
    for doc in (config, job):
        validate(doc)
        assert doc["metadata"]["namespace"] == "farm-sandbox"
    import base64
    import gzip
    assert gzip.decompress(base64.b64decode(config["binaryData"]["notebook.ipynb.gz"])) == notebook
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 600 and spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor" and pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False and not any(pod[k] for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # its service account is the sandbox's own, bound to nothing and with no Google account
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in rendered["overlays/prod"]
                if d["kind"] == "ServiceAccount"}
    assert ("farm-sandbox", pod["serviceAccountName"]) in accounts
    bound = {s["name"] for d in rendered["overlays/prod"] if d["kind"] == "RoleBinding" for s in d["subjects"]}
    assert pod["serviceAccountName"] not in bound
    (container,) = pod["containers"]
    assert container["command"][:4] == ["python", "-m", "farmkit.api.sandbox", "check"]
    assert container["command"][-3:] == ["--name", "sma-cross", "--allow-overfit"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False
    # no credential reaches it: no envFrom, no value from a Secret or the API, no Secret or projected volume
    assert "envFrom" not in container and all(set(e) == {"name", "value"} for e in container["env"])
    env = {e["name"]: e["value"] for e in container["env"]}
    from farmkit.redact import secret_name
    assert not [name for name in env if secret_name(name) or name.startswith(("APCA_", "GOOGLE_", "AWS_"))]
    assert env["FARM_REDIS"] == "off" and env["HOME"] == "/tmp"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", env["FARM_HOME"], "/upload"}
    assert {next(k for k in v if k != "name") for v in pod["volumes"]} == {"configMap", "emptyDir"}
    # within the sandbox namespace's LimitRange
    (limit_range,) = [d for d in rendered["overlays/prod"] if d["kind"] == "LimitRange"]
    most = limit_range["spec"]["limits"][0]["max"]
    assert container["resources"]["limits"]["memory"] == "4096Mi" and int(most["memory"].removesuffix("Gi")) >= 4
    assert float(container["resources"]["limits"]["cpu"]) <= float(most["cpu"])
    with pytest.raises(Exception, match="too big for the sandbox"):
        sandbox.manifests("0" * 32, os.urandom(1_100_000), name="big", allow_overfit=False)
