"""Prometheus metrics of one serving replica (prometheus_client, its own registry).

Scrape `GET /metrics` on the serving port. With more than one replica each scrape reaches
one of them; every series carries the replica's id, so nothing is double-counted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Request latency buckets in seconds: the by-entity target is 15 ms at p50.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """The serving application's metrics, labelled with the model and the replica."""

    def __init__(self, model: str, replica: str):
        self.model = model
        self.replica = replica
        self.registry = CollectorRegistry(auto_describe=True)
        common = ["model", "replica"]
        self.requests = Counter(
            "driftloop_serving_requests", "Prediction requests answered, by model version, "
            "request mode (entity or features) and HTTP status code.",
            [*common, "version", "mode", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "driftloop_serving_request_duration_seconds", "Time to answer a prediction "
            "request inside the replica (parse, online features, score), by model version.",
            [*common, "version", "mode"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.rows = Counter(
            "driftloop_serving_rows", "Rows scored, by model version and role (champion, or "
            "shadow for the challenger).", [*common, "version", "role"], registry=self.registry,
        )  # fmt: skip
        self.imputed_rows = Counter(
            "driftloop_serving_imputed_rows", "Rows scored with at least one missing feature "
            "(imputed by the model's pipeline, and flagged in the response).",
            [*common, "version"], registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "driftloop_serving_errors", "Refused or failed requests, by kind (e.g. "
            "unknown_entity, missing_feature, wrong_type, too_large, no_champion, internal).",
            [*common, "kind"], registry=self.registry,
        )  # fmt: skip
        self.champion_version = Gauge(
            "driftloop_serving_champion_version", "The registry version the replica serves "
            "as champion (0: none yet).", common, registry=self.registry,
        )  # fmt: skip
        self.swaps = Counter(
            "driftloop_serving_model_swaps", "Times the replica swapped its champion.",
            common, registry=self.registry,
        )  # fmt: skip
        self.drift_share = Gauge(
            "driftloop_drift_share", "Share of drifted features at the last drift check of "
            "the served champion (NaN before its first check).", [*common, "version"],
            registry=self.registry,
        )  # fmt: skip
        self.champion_version.labels(model, replica).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
