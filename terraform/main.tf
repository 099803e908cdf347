# The Farm on Google Cloud: a private GKE cluster, the Pub/Sub bus, the BigQuery store, Memorystore
# for the leaderboards, a bucket for agents, the image registry, two workload identities and a dashboard.
# The Kubernetes side is k8s/ (kubectl apply -k k8s/overlays/prod); see README.md for the order.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {}

locals {
  name = "farm"
  # Kept equal to k8s/base/networkpolicies.yaml (tests/deploy/test_terraform.py checks both).
  redis_range         = "10.30.0.0/29"
  control_plane_range = "172.16.0.0/28"
  google_apis_range   = ["199.36.153.8", "199.36.153.9", "199.36.153.10", "199.36.153.11"]
  # The BigQuery tables are defined once, in farmkit; Terraform reads the same files.
  schemas = "${path.module}/../farmkit/schemas/bigquery"
  # Kubernetes namespaces (k8s/overlays) whose service accounts act as the Google ones below.
  namespaces = ["farm", "farm-dev"]
  # JupyterHub's user servers (jupyterhub/values.yaml) run as jupyterhub/farm-notebook.
  workload_ksas = merge({
    for pair in setproduct(local.namespaces, ["farm-ingester", "farm-agent", "farm-sweep"]) :
    "${pair[0]}/${pair[1]}" => pair
  }, { "jupyterhub/farm-notebook" = ["jupyterhub", "farm-notebook"] })
  api_ksas = { for ns in local.namespaces : "${ns}/farm-api" => [ns, "farm-api"] }
  labels   = { app = "the-farm" }
}

resource "google_project_service" "apis" {
  for_each = toset([
    "container.googleapis.com", "pubsub.googleapis.com", "bigquery.googleapis.com", "redis.googleapis.com",
    "artifactregistry.googleapis.com", "monitoring.googleapis.com", "dns.googleapis.com", "iam.googleapis.com",
    "servicenetworking.googleapis.com", "storage.googleapis.com", "secretmanager.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}

# -- network: private nodes, Private Google Access, NAT for the ingester's Alpaca connections ---------

resource "google_compute_network" "farm" {
  name                    = local.name
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

resource "google_compute_subnetwork" "nodes" {
  name                     = "${local.name}-nodes"
  network                  = google_compute_network.farm.id
  region                   = var.region
  ip_cidr_range            = "10.10.0.0/20"
  private_ip_google_access = true
  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = "10.20.0.0/16"
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = "10.21.0.0/20"
  }
  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# GKE adds the rules the cluster needs (control plane to nodes, health checks) above this one.
resource "google_compute_firewall" "deny_ingress" {
  name          = "${local.name}-deny-ingress"
  network       = google_compute_network.farm.id
  direction     = "INGRESS"
  priority      = 65534
  source_ranges = ["0.0.0.0/0"]
  deny {
    protocol = "all"
  }
  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "farm" {
  name    = local.name
  network = google_compute_network.farm.id
  region  = var.region
}

resource "google_compute_router_nat" "farm" {
  name                               = local.name
  router                             = google_compute_router.farm.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"
  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# *.googleapis.com resolves to private.googleapis.com inside the VPC, so the NetworkPolicies can allow
# Google APIs by one small address range.
resource "google_dns_managed_zone" "googleapis" {
  name       = "${local.name}-googleapis"
  dns_name   = "googleapis.com."
  visibility = "private"
  private_visibility_config {
    networks {
      network_url = google_compute_network.farm.id
    }
  }
}

resource "google_dns_record_set" "googleapis_a" {
  managed_zone = google_dns_managed_zone.googleapis.name
  name         = "private.googleapis.com."
  type         = "A"
  ttl          = 300
  rrdatas      = local.google_apis_range
}

resource "google_dns_record_set" "googleapis_cname" {
  managed_zone = google_dns_managed_zone.googleapis.name
  name         = "*.googleapis.com."
  type         = "CNAME"
  ttl          = 300
  rrdatas      = ["private.googleapis.com."]
}

# -- GKE: private, Workload Identity, Dataplane V2 (enforces NetworkPolicies), autoscaling pool ---------

resource "google_container_cluster" "farm" {
  name                        = local.name
  location                    = var.region
  network                     = google_compute_network.farm.id
  subnetwork                  = google_compute_subnetwork.nodes.id
  remove_default_node_pool    = true
  initial_node_count          = 1
  deletion_protection         = true
  datapath_provider           = "ADVANCED_DATAPATH"
  enable_intranode_visibility = true
  enable_shielded_nodes       = true
  resource_labels             = local.labels

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }
  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = true
    master_ipv4_cidr_block  = local.control_plane_range
  }
  master_authorized_networks_config {
    cidr_blocks {
      cidr_block   = var.control_plane_access_cidr
      display_name = "control plane access"
    }
  }
  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }
  release_channel {
    channel = "REGULAR"
  }
  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }
  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }
  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }
  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS", "POD", "DEPLOYMENT", "STATEFULSET", "HPA"]
    managed_prometheus {
      enabled = true
    }
  }
  node_config {
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }
}

resource "google_container_node_pool" "farm" {
  name     = "${local.name}-pool"
  cluster  = google_container_cluster.farm.id
  location = var.region
  autoscaling {
    min_node_count = 1
    max_node_count = var.node_max_count
  }
  management {
    auto_repair  = true
    auto_upgrade = true
  }
  node_config {
    machine_type    = var.node_machine_type
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = local.labels
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }
}

# Uploaded notebooks are checked in Jobs on gVisor (GKE Sandbox: runtimeClassName gvisor, k8s/base/sandbox).
# Their own pool, scaled to zero between checks; GKE taints it so that only sandboxed pods land there.
resource "google_container_node_pool" "sandbox" {
  name     = "${local.name}-sandbox"
  cluster  = google_container_cluster.farm.id
  location = var.region
  autoscaling {
    min_node_count = 0
    max_node_count = var.sandbox_node_max_count
  }
  management {
    auto_repair  = true
    auto_upgrade = true
  }
  node_config {
    machine_type    = var.node_machine_type
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = merge(local.labels, { "farm-pool" = "sandbox" })
    sandbox_config {
      sandbox_type = "gvisor"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }
}

# -- Pub/Sub: the bus. Names are the ingester's defaults (ingester/settings.py, ingester/cli.py) --------

resource "google_pubsub_topic" "market_data" {
  name                       = "market-data"
  message_retention_duration = "604800s"
  labels                     = local.labels
}

resource "google_pubsub_topic" "news_data" {
  name                       = "news-data"
  message_retention_duration = "604800s"
  labels                     = local.labels
}

resource "google_pubsub_topic" "market_data_dead_letter" {
  name                       = "market-data-dead-letter"
  message_retention_duration = "604800s"
  labels                     = local.labels
}

resource "google_pubsub_topic" "news_data_dead_letter" {
  name                       = "news-data-dead-letter"
  message_retention_duration = "604800s"
  labels                     = local.labels
}

# `farm archive` reads these two (farmkit.data.archive), acking only what it has written.
resource "google_pubsub_subscription" "archive_market_data" {
  name                       = "archive-market-data"
  topic                      = google_pubsub_topic.market_data.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false
  labels                     = local.labels
  expiration_policy {
    ttl = ""
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.market_data_dead_letter.id
    max_delivery_attempts = 10
  }
}

resource "google_pubsub_subscription" "archive_news_data" {
  name                       = "archive-news-data"
  topic                      = google_pubsub_topic.news_data.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false
  labels                     = local.labels
  expiration_policy {
    ttl = ""
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.news_data_dead_letter.id
    max_delivery_attempts = 10
  }
}

# Dead letters are kept for someone to look at: a subscription on each dead-letter topic holds them.
resource "google_pubsub_subscription" "market_data_dead_letter" {
  name                       = "market-data-dead-letter"
  topic                      = google_pubsub_topic.market_data_dead_letter.id
  message_retention_duration = "604800s"
  labels                     = local.labels
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "news_data_dead_letter" {
  name                       = "news-data-dead-letter"
  topic                      = google_pubsub_topic.news_data_dead_letter.id
  message_retention_duration = "604800s"
  labels                     = local.labels
  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's own service agent moves messages to the dead-letter topics.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = {
    market = google_pubsub_topic.market_data_dead_letter.id
    news   = google_pubsub_topic.news_data_dead_letter.id
  }
  topic  = each.value
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = {
    market = google_pubsub_subscription.archive_market_data.id
    news   = google_pubsub_subscription.archive_news_data.id
  }
  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# -- BigQuery: the store. Schemas, partitioning and clustering as farmkit/schemas/bigquery/ says -------

resource "google_bigquery_dataset" "farm" {
  dataset_id                 = local.name
  location                   = var.region
  description                = "The Farm: FMEL, the run registry and the market-data archive"
  delete_contents_on_destroy = false
  labels                     = local.labels
}

resource "google_bigquery_table" "fmel" {
  dataset_id          = google_bigquery_dataset.farm.dataset_id
  table_id            = "fmel"
  description         = "FMEL: one record per bar per run; readers deduplicate on record_id"
  schema              = file("${local.schemas}/fmel.json")
  deletion_protection = true
  clustering          = ["agent_id", "run_id"]
  labels              = local.labels
  time_partitioning {
    type  = "DAY"
    field = "timestamp"
  }
}

resource "google_bigquery_table" "runs" {
  dataset_id          = google_bigquery_dataset.farm.dataset_id
  table_id            = "runs"
  description         = "The run registry: one row per backtest, sweep trial or paper session"
  schema              = file("${local.schemas}/runs.json")
  deletion_protection = true
  clustering          = ["agent_id"]
  labels              = local.labels
}

resource "google_bigquery_table" "market_data" {
  dataset_id          = google_bigquery_dataset.farm.dataset_id
  table_id            = "market_data"
  description         = "Archived bars from the bus; key (symbol, timestamp, revision)"
  schema              = file("${local.schemas}/market_data.json")
  deletion_protection = true
  clustering          = ["symbol"]
  labels              = local.labels
  time_partitioning {
    type  = "DAY"
    field = "timestamp"
  }
}

resource "google_bigquery_table" "news" {
  dataset_id          = google_bigquery_dataset.farm.dataset_id
  table_id            = "news"
  description         = "Archived news from the bus; key (id, updated_at)"
  schema              = file("${local.schemas}/news.json")
  deletion_protection = true
  clustering          = ["source"]
  labels              = local.labels
  time_partitioning {
    type  = "DAY"
    field = "created_at"
  }
}

# -- Memorystore: the leaderboards (FARM_REDIS=rediss://HOST:6378/0, output redis_url) --------------
# AUTH and in-transit encryption: a client needs the auth string and the instance's CA, both kept in
# Secret Manager and readable only by the workloads' and the API's service accounts.

resource "google_redis_instance" "leaderboard" {
  name                    = "${local.name}-leaderboard"
  tier                    = "STANDARD_HA"
  memory_size_gb          = 1
  region                  = var.region
  redis_version           = "REDIS_7_0"
  authorized_network      = google_compute_network.farm.id
  connect_mode            = "DIRECT_PEERING"
  reserved_ip_range       = local.redis_range
  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"
  labels                  = local.labels
  depends_on              = [google_project_service.apis]
}

resource "google_secret_manager_secret" "redis" {
  for_each  = toset(["auth", "ca"])
  secret_id = "${local.name}-redis-${each.value}"
  labels    = local.labels
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "redis_auth" {
  secret      = google_secret_manager_secret.redis["auth"].id
  secret_data = google_redis_instance.leaderboard.auth_string
}

resource "google_secret_manager_secret_version" "redis_ca" {
  secret      = google_secret_manager_secret.redis["ca"].id
  secret_data = join("\n", [for c in google_redis_instance.leaderboard.server_ca_certs : c.cert])
}

resource "google_secret_manager_secret_iam_member" "redis_readers" {
  for_each = {
    for pair in setproduct(["auth", "ca"], ["workloads", "api"]) : "${pair[0]}-${pair[1]}" => pair
  }
  secret_id = google_secret_manager_secret.redis[each.value[0]].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${each.value[1] == "api" ? google_service_account.api.email : google_service_account.workloads.email}"
}

# -- agents bucket and the image registry ------------------------------------------------------------

resource "google_storage_bucket" "agents" {
  name                        = "${var.project_id}-farm-agents"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels
  versioning {
    enabled = true
  }
  lifecycle {
    prevent_destroy = true
  }
}

resource "google_artifact_registry_repository" "farm" {
  repository_id = local.name
  location      = var.region
  format        = "DOCKER"
  description   = "The Farm's images: ingester, runner, api, singleuser (docker/)"
  labels        = local.labels
  depends_on    = [google_project_service.apis]
}

# -- identities: what each part may do, and nothing else ----------------------------------------------

resource "google_service_account" "nodes" {
  account_id   = "${local.name}-nodes"
  display_name = "The Farm: GKE nodes (logs, metrics, image pulls)"
}

resource "google_service_account" "workloads" {
  account_id   = "${local.name}-workloads"
  display_name = "The Farm: ingester, agents and sweeps"
}

resource "google_service_account" "api" {
  account_id   = "${local.name}-api"
  display_name = "The Farm: REST API"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/monitoring.viewer",
  "roles/stackdriver.resourceMetadata.writer"])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  repository = google_artifact_registry_repository.farm.name
  location   = var.region
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.nodes.email}"
}

# Workload Identity: the Kubernetes service accounts of k8s/base/serviceaccounts.yaml act as these.
resource "google_service_account_iam_member" "workloads_identity" {
  for_each           = local.workload_ksas
  service_account_id = google_service_account.workloads.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${each.value[0]}/${each.value[1]}]"
}

resource "google_service_account_iam_member" "api_identity" {
  for_each           = local.api_ksas
  service_account_id = google_service_account.api.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${each.value[0]}/${each.value[1]}]"
}

# The bus calls farmkit makes (farmkit/bus/pubsub.py): get-or-create of topics and subscriptions,
# publish, pull and ack. Narrower than roles/pubsub.editor: no deletes, no IAM, no snapshots.
resource "google_project_iam_custom_role" "bus_client" {
  role_id     = "farmBusClient"
  title       = "The Farm bus client"
  description = "Get-or-create topics and subscriptions, publish, pull and ack"
  permissions = [
    "pubsub.topics.create", "pubsub.topics.get", "pubsub.topics.publish", "pubsub.topics.attachSubscription",
    "pubsub.subscriptions.create", "pubsub.subscriptions.get", "pubsub.subscriptions.consume",
  ]
}

resource "google_project_iam_member" "workloads_bus" {
  project = var.project_id
  role    = google_project_iam_custom_role.bus_client.id
  member  = "serviceAccount:${google_service_account.workloads.email}"
}

resource "google_bigquery_dataset_iam_member" "workloads_write" {
  dataset_id = google_bigquery_dataset.farm.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.workloads.email}"
}

resource "google_bigquery_dataset_iam_member" "api_read" {
  dataset_id = google_bigquery_dataset.farm.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${google_service_account.api.email}"
}

resource "google_project_iam_member" "bigquery_jobs" {
  for_each = {
    workloads = google_service_account.workloads.email
    api       = google_service_account.api.email
  }
  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = "serviceAccount:${each.value}"
}

resource "google_storage_bucket_iam_member" "workloads_agents" {
  bucket = google_storage_bucket.agents.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.workloads.email}"
}

resource "google_storage_bucket_iam_member" "api_agents" {
  bucket = google_storage_bucket.agents.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.api.email}"
}

# -- monitoring -------------------------------------------------------------------------------------

# Ingester and API panels read the pods' /metrics through Google Managed Prometheus (enabled on the
# cluster above; a PodMonitoring per component tells it what to scrape, see README.md).
resource "google_monitoring_dashboard" "farm" {
  dashboard_json = jsonencode({
    displayName = "The Farm"
    mosaicLayout = {
      columns = 12
      tiles = [
        {
          xPos = 0, yPos = 0, width = 6, height = 4
          widget = {
            title = "Ingester shards ready and connected"
            xyChart = { dataSets = [
              { plotType = "LINE", timeSeriesQuery = { prometheusQuery = "sum by (pod) (farm_ready{namespace=\"farm\",pod=~\"ingester-.*\"})" } },
              { plotType = "LINE", timeSeriesQuery = { prometheusQuery = "sum by (pod) (farm_ingest_connected{namespace=\"farm\"})" } },
            ] }
          }
        },
        {
          xPos = 6, yPos = 0, width = 6, height = 4
          widget = {
            title = "Ingester: seconds since the last message, messages published per second"
            xyChart = { dataSets = [
              { plotType = "LINE", timeSeriesQuery = { prometheusQuery = "max by (pod) (farm_ingest_last_message_age_seconds{namespace=\"farm\"})" } },
              { plotType = "LINE", timeSeriesQuery = { prometheusQuery = "sum by (pod) (rate(farm_ingest_messages_published_total{namespace=\"farm\"}[5m]))" } },
            ] }
          }
        },
        {
          xPos = 0, yPos = 4, width = 6, height = 4
          widget = {
            title = "Pub/Sub backlog: undelivered messages per subscription"
            xyChart = { dataSets = [{
              plotType = "LINE"
              timeSeriesQuery = { timeSeriesFilter = {
                filter      = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" resource.type=\"pubsub_subscription\""
                aggregation = { alignmentPeriod = "60s", perSeriesAligner = "ALIGN_MEAN", crossSeriesReducer = "REDUCE_SUM", groupByFields = ["resource.label.subscription_id"] }
              } }
            }] }
          }
        },
        {
          xPos = 6, yPos = 4, width = 6, height = 4
          widget = {
            title = "Pub/Sub: oldest unacked message age (s)"
            xyChart = { dataSets = [{
              plotType = "LINE"
              timeSeriesQuery = { timeSeriesFilter = {
                filter      = "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" resource.type=\"pubsub_subscription\""
                aggregation = { alignmentPeriod = "60s", perSeriesAligner = "ALIGN_MAX", crossSeriesReducer = "REDUCE_MAX", groupByFields = ["resource.label.subscription_id"] }
              } }
            }] }
          }
        },
        {
          xPos = 0, yPos = 8, width = 6, height = 4
          widget = {
            title = "Pods: container restarts and agents not ready"
            xyChart = { dataSets = [
              {
                plotType = "STACKED_BAR"
                timeSeriesQuery = { timeSeriesFilter = {
                  filter      = "metric.type=\"kubernetes.io/container/restart_count\" resource.type=\"k8s_container\" resource.label.namespace_name=\"farm\""
                  aggregation = { alignmentPeriod = "300s", perSeriesAligner = "ALIGN_DELTA", crossSeriesReducer = "REDUCE_SUM", groupByFields = ["resource.label.pod_name"] }
                } }
              },
              { plotType = "LINE", timeSeriesQuery = { prometheusQuery = "sum by (pod) (1 - farm_ready{namespace=\"farm\",pod!~\"ingester-.*\"})" } },
            ] }
          }
        },
        {
          xPos = 6, yPos = 8, width = 6, height = 4
          widget = {
            title = "API: p95 latency (s) and 5xx responses per second"
            xyChart = { dataSets = [
              { plotType = "LINE", timeSeriesQuery = { prometheusQuery = "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{namespace=\"farm\",container=\"api\"}[5m])))" } },
              { plotType = "LINE", timeSeriesQuery = { prometheusQuery = "sum(rate(http_requests_total{namespace=\"farm\",container=\"api\",status=~\"5..\"}[5m]))" } },
            ] }
          }
        },
      ]
    }
  })
}

output "cluster" {
  value = google_container_cluster.farm.name
}

output "redis_url" {
  description = "FARM_REDIS for k8s/overlays/*/ (the ConfigMap farm-config): TLS, with the auth string and CA from Secret Manager"
  value = format("rediss://%s:%d/0?auth_secret=%s&ca_secret=%s", google_redis_instance.leaderboard.host,
    google_redis_instance.leaderboard.port, google_secret_manager_secret.redis["auth"].id,
  google_secret_manager_secret.redis["ca"].id)
}

output "store_url" {
  description = "FARM_STORE for k8s/overlays/*/"
  value       = "bigquery://${var.project_id}/${google_bigquery_dataset.farm.dataset_id}"
}

output "registry" {
  value = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.farm.repository_id}"
}

output "service_accounts" {
  value = { workloads = google_service_account.workloads.email, api = google_service_account.api.email }
}
