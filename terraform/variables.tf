variable "project_id" {
  description = "GCP project that holds everything The Farm runs on."
  type        = string
}

variable "region" {
  description = "Region of the cluster, Memorystore, the bucket and the registry."
  type        = string
  default     = "us-central1"
}

variable "node_machine_type" {
  description = "Machine type of the autoscaling node pool."
  type        = string
  default     = "e2-standard-4"
}

variable "node_max_count" {
  description = "Most nodes per zone the node pool scales out to (sweeps are what fill it)."
  type        = number
  default     = 5
}

variable "sandbox_node_max_count" {
  description = "Most nodes of the gVisor pool where uploaded notebooks are checked (it scales to zero between checks)"
  type        = number
  default     = 2
}

variable "control_plane_access_cidr" {
  description = "The only network allowed to reach the cluster's control plane (e.g. an office or VPN range)."
  type        = string
  default     = "10.0.0.0/8"
}
