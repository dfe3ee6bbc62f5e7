"""Telemetry: Prometheus metrics, JSON logs, OpenTelemetry tracing and the hooks that observe the engine. Imports only writ.core."""
