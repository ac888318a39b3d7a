"""Central inference service: model registry, authenticated REST API, audit log, metrics."""
