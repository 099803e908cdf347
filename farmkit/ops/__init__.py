"""The operations wing, built on research and live: ``promote`` (a notebook becomes a verified agent),
``deploy`` (an agent's Kubernetes manifests), ``orchestrators`` (paper runs as local processes or
StatefulSets) and ``agents`` (the agent store behind the REST API)."""
