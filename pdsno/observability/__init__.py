"""Metrics (Prometheus, on a port of their own) and JSON logs with request IDs."""
