"""terraform/: formatted, parsed with python-hcl2, and checked for what the cluster and the data need.
`terraform init/validate/plan` cannot run here (the google provider cannot be downloaded offline)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import need
from tests.deploy.manifests import K8S, ROOT

TF = ROOT / "terraform"


def unquote(value):
    """python-hcl2 keeps the quotes of string literals: '"fmel"' -> 'fmel', recursively."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if not k.startswith("__")}
    return value


@pytest.fixture(scope="module")
def hcl() -> dict:
    try:
        import hcl2
    except ImportError:
        need(False, "python-hcl2 is not installed (pip install -e '.[test]')")
    parsed = {}
    for name in ("main.tf", "variables.tf"):
        with (TF / name).open() as f:
            for key, value in hcl2.load(f).items():
                parsed.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return parsed


@pytest.fixture(scope="module")
def resources(hcl) -> dict[tuple[str, str], dict]:
    found = {}
    for block in hcl["resource"]:
        for kind, named in unquote(block).items():
            for name, body in named.items():
                assert (kind, name) not in found
                found[kind, name] = body
    return found


@pytest.fixture(scope="module")
def local(hcl) -> dict:
    merged = {}
    for block in hcl["locals"]:
        merged.update(unquote(block))
    return merged


def one(value):
    """A nested block as python-hcl2 gives it: a list of one dict."""
    assert isinstance(value, list) and len(value) == 1, value
    return value[0]


def test_terraform_fmt_check():
    terraform = shutil.which("terraform")
    need(terraform is not None, "terraform is not on PATH (only `terraform fmt` is used: no provider is needed)")
    out = subprocess.run([terraform, "fmt", "-check", "-diff", "-recursive", str(TF)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "TF_IN_AUTOMATION": "1"})
    assert out.returncode == 0, f"terraform fmt would change these files:\n{out.stdout}"


def test_the_expected_resources_are_declared(resources):
    expected = {
        ("google_container_cluster", "farm"), ("google_container_node_pool", "farm"),
        ("google_pubsub_topic", "market_data"), ("google_pubsub_topic", "news_data"),
        ("google_pubsub_subscription", "archive_market_data"), ("google_pubsub_subscription", "archive_news_data"),
        ("google_bigquery_dataset", "farm"), ("google_redis_instance", "leaderboard"),
        ("google_storage_bucket", "agents"), ("google_artifact_registry_repository", "farm"),
        ("google_service_account", "workloads"), ("google_service_account", "api"),
        ("google_monitoring_dashboard", "farm"),
    }
    assert expected <= set(resources)
    assert {name for kind, name in resources if kind == "google_bigquery_table"} == \
        {"fmel", "runs", "market_data", "news"}


def test_gke_is_private_with_workload_identity_and_an_autoscaling_pool(resources, local):
    cluster = resources["google_container_cluster", "farm"]
    private = one(cluster["private_cluster_config"])
    assert private["enable_private_nodes"] is True
    assert private["master_ipv4_cidr_block"] == "${local.control_plane_range}"
    assert one(cluster["workload_identity_config"])["workload_pool"] == "${var.project_id}.svc.id.goog"
    assert cluster["datapath_provider"] == "ADVANCED_DATAPATH"     # enforces the NetworkPolicies
    assert cluster["deletion_protection"] is True
    pool = resources["google_container_node_pool", "farm"]
    scaling = one(pool["autoscaling"])
    assert scaling["min_node_count"] >= 1 and scaling["max_node_count"] == "${var.node_max_count}"
    node = one(pool["node_config"])
    assert one(node["workload_metadata_config"])["mode"] == "GKE_METADATA"
    assert node["service_account"] == "${google_service_account.nodes.email}"


def test_topics_have_dead_letters_and_retention(resources):
    subs = {body["name"]: body for (kind, _), body in resources.items() if kind == "google_pubsub_subscription"}
    topics = {name: body for (kind, name), body in resources.items() if kind == "google_pubsub_topic"}
    assert {t["name"] for t in topics.values()} == {"market-data", "news-data", "market-data-dead-letter",
                                                    "news-data-dead-letter"}
    for topic in topics.values():
        assert topic["message_retention_duration"].endswith("s")
    # The archive's subscription names are the ones `farm archive` reads (ingester/cli.py).
    cli = (ROOT / "ingester" / "cli.py").read_text()
    for sub, topic in (("archive-market-data", "market_data"), ("archive-news-data", "news_data")):
        assert sub in cli
        body = subs[sub]
        assert body["topic"] == f"${{google_pubsub_topic.{topic}.id}}"
        letter = one(body["dead_letter_policy"])
        assert letter["dead_letter_topic"] == f"${{google_pubsub_topic.{topic}_dead_letter.id}}"
        assert 5 <= letter["max_delivery_attempts"] <= 100
        assert int(body["message_retention_duration"].rstrip("s")) >= 86400
        assert one(body["expiration_policy"])["ttl"] == ""        # never deleted for being idle
        assert one(body["retry_policy"])
    # Pub/Sub's service agent may publish to the dead-letter topics and pull from the sources.
    assert "gcp-sa-pubsub" in resources["google_pubsub_topic_iam_member", "dead_letter_publisher"]["member"]
    assert "gcp-sa-pubsub" in resources["google_pubsub_subscription_iam_member", "dead_letter_subscriber"]["member"]


def test_bigquery_schemas_are_farmkits(resources, local):
    pytest.importorskip("google.cloud.bigquery")
    from farmkit.fmel import bigquery, schema

    specs = bigquery.table_specs()
    assert local["schemas"] == "${path.module}/../farmkit/schemas/bigquery"
    folder = (TF / "../farmkit/schemas/bigquery").resolve()
    tables = {name: body for (kind, name), body in resources.items() if kind == "google_bigquery_table"}
    assert set(tables) == set(specs)
    for name, body in tables.items():
        spec = specs[name]
        assert body["table_id"] == name
        match = re.fullmatch(r'\$\{file\("\$\{local\.schemas\}/([\w.]+)"\)\}', body["schema"])
        assert match, f"table {name}: schema must be read with file() from farmkit's schema folder"
        assert match.group(1) == spec["schema"]
        assert json.loads((folder / match.group(1)).read_text()) == spec["fields"]
        assert body["clustering"] == spec["clustering"]
        if "partition" in spec:
            partition = one(body["time_partitioning"])
            assert (partition["type"], partition["field"]) == (spec["partition"]["type"], spec["partition"]["field"])
        else:
            assert "time_partitioning" not in body
        assert body["deletion_protection"] is True
    assert specs["fmel"]["partition"]["field"] == "timestamp" and specs["fmel"]["clustering"] == ["agent_id", "run_id"]
    # ... and those files are the one FMEL definition farmkit writes its Parquet from
    for name in ("fmel", "runs"):
        assert (folder / f"{name}.json").read_text() == bigquery.render_fields(schema.fields(name))


def test_data_is_protected_from_deletion(resources):
    assert resources["google_bigquery_dataset", "farm"]["delete_contents_on_destroy"] is False
    bucket = resources["google_storage_bucket", "agents"]
    assert bucket["force_destroy"] is False
    assert one(bucket["lifecycle"])["prevent_destroy"] is True
    assert one(bucket["versioning"])["enabled"] is True
    assert bucket["public_access_prevention"] == "enforced"


def test_iam_is_least_privilege(resources):
    bindings = [(kind, name, body) for (kind, name), body in resources.items() if kind.endswith("_iam_member")]
    assert bindings
    broad = {"roles/owner", "roles/editor", "roles/viewer", "roles/pubsub.admin", "roles/pubsub.editor",
             "roles/bigquery.admin", "roles/bigquery.dataEditor", "roles/bigquery.dataOwner", "roles/storage.admin",
             "roles/iam.serviceAccountUser", "roles/container.admin"}
    for kind, name, body in bindings:
        if kind == "google_project_iam_member":
            # project-wide: only running BigQuery jobs, the bus role, and the nodes' logs and metrics
            assert body["role"] not in broad, (name, body["role"])
    roles = {name: body["role"] for kind, name, body in bindings}
    assert roles["workloads_write"] == "roles/bigquery.dataEditor"      # on the dataset, not the project
    assert resources["google_bigquery_dataset_iam_member", "workloads_write"]["dataset_id"].startswith(
        "${google_bigquery_dataset.farm")
    assert roles["api_read"] == "roles/bigquery.dataViewer"
    permissions = resources["google_project_iam_custom_role", "bus_client"]["permissions"]
    assert not [p for p in permissions if p.endswith((".delete", ".setIamPolicy", ".update"))]


def test_workload_identity_matches_the_kubernetes_service_accounts(local, resources):
    accounts = [d for d in yaml.safe_load_all((K8S / "base/serviceaccounts.yaml").read_text())]
    gsa = {a["metadata"]["name"]: a["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].split("@")[0]
           for a in accounts}
    workloads = re.findall(r'"(farm-[a-z]+)"', local["workload_ksas"])
    hub = yaml.safe_load((ROOT / "jupyterhub/values.yaml").read_text())["singleuser"]["serviceAccountName"]
    assert {k for k, v in gsa.items() if v == "farm-workloads"} | {hub} == set(workloads)
    assert gsa["farm-api"] == "farm-api" and "farm-api" in local["api_ksas"]
    assert resources["google_service_account", "workloads"]["account_id"] == "${local.name}-workloads"
    assert local["name"] == "farm"
    overlays = {yaml.safe_load((K8S / "overlays" / o / "farm" / "kustomization.yaml").read_text())["namespace"]
                for o in ("dev", "prod")}
    assert overlays == set(local["namespaces"])


def test_addresses_match_the_network_policies(local):
    policies = {p["metadata"]["name"]: p for p in yaml.safe_load_all((K8S / "base/networkpolicies.yaml").read_text())}

    def cidrs(name):
        return {peer["ipBlock"]["cidr"] for rule in policies[name]["spec"]["egress"] for peer in rule["to"]
                if "ipBlock" in peer}

    assert cidrs("allow-redis") == {local["redis_range"]}
    assert cidrs("api-egress-control-plane") == {local["control_plane_range"]}
    google = ipaddress.ip_network("199.36.153.8/30")
    assert "199.36.153.8/30" in cidrs("allow-google-apis")
    assert {ipaddress.ip_address(a) for a in local["google_apis_range"]} == set(google)


def test_dashboard_shows_ingester_backlog_pods_and_api(resources):
    text = resources["google_monitoring_dashboard", "farm"]["dashboard_json"]
    for metric in ("farm_ingest_connected", "farm_ingest_last_message_age_seconds",
                   "pubsub.googleapis.com/subscription/num_undelivered_messages",
                   "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
                   "kubernetes.io/container/restart_count", "http_request_duration_seconds", "status=~"):
        assert metric in text, metric
    # metric names the ingester really exports
    exported = "".join(p.read_text() for p in (ROOT / "ingester").glob("*.py"))
    assert "farm_ingest_connected" in exported and "farm_ingest_last_message_age_seconds" in exported


def test_variables_are_few_documented_and_in_the_example(hcl):
    variables = {}
    for block in hcl["variable"]:
        variables.update(unquote(block))
    assert 3 <= len(variables) <= 6
    for name, body in variables.items():
        assert body.get("description") and body.get("type"), name
    example = (TF / "terraform.tfvars.example").read_text()
    given = set(re.findall(r"^(\w+)\s*=", example, flags=re.M))
    assert given == set(variables)


def test_memorystore_needs_auth_and_tls_kept_in_secret_manager(resources, hcl):
    redis = resources["google_redis_instance", "leaderboard"]
    assert redis["auth_enabled"] is True
    assert redis["transit_encryption_mode"] == "SERVER_AUTHENTICATION"
    assert resources["google_secret_manager_secret_version", "redis_auth"]["secret_data"] == \
        "${google_redis_instance.leaderboard.auth_string}"
    assert "server_ca_certs" in resources["google_secret_manager_secret_version", "redis_ca"]["secret_data"]
    readers = resources["google_secret_manager_secret_iam_member", "redis_readers"]
    assert readers["role"] == "roles/secretmanager.secretAccessor"
    outputs = {name: body for block in unquote(hcl["output"]) for name, body in block.items()}
    url = outputs["redis_url"]["value"]
    assert url.startswith('${format("rediss://') and "auth_secret=" in url and "ca_secret=" in url


def test_the_sandbox_jobs_have_a_gvisor_pool_to_run_on(resources):
    from farmkit.ops.orchestrators import KubernetesSandbox

    pool = resources["google_container_node_pool", "sandbox"]
    (config,) = pool["node_config"] if isinstance(pool["node_config"], list) else [pool["node_config"]]
    sandbox = config["sandbox_config"]
    sandbox = sandbox[0] if isinstance(sandbox, list) else sandbox
    assert sandbox["sandbox_type"] == "gvisor"
    autoscaling = pool["autoscaling"][0] if isinstance(pool["autoscaling"], list) else pool["autoscaling"]
    assert autoscaling["min_node_count"] == 0
    import inspect
    assert inspect.signature(KubernetesSandbox).parameters["runtime_class"].default == "gvisor"
