"""Deployments of driftloop's flows, with their schedules and triggers.

This package is the single source of truth: `prefect.yaml` is rendered from it
(`make prefect.yaml`), `make up` deploys that file, and a test fails if the two disagree.
"""

from deployments.monitoring import (
    DETECT_CHURN_DATA,
    MATERIALIZE_CHURN_FEATURES,
    MONITOR_CHURN_DRIFT,
    SCORE_CHURN_BATCH,
)
from deployments.spec import DeploymentSpec, EventTrigger, Schedule
from deployments.training import TRAIN_CHURN_MODEL

DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    TRAIN_CHURN_MODEL,
    DETECT_CHURN_DATA,
    MONITOR_CHURN_DRIFT,
    MATERIALIZE_CHURN_FEATURES,
    SCORE_CHURN_BATCH,
)

__all__ = [
    "DEPLOYMENTS",
    "DETECT_CHURN_DATA",
    "MATERIALIZE_CHURN_FEATURES",
    "MONITOR_CHURN_DRIFT",
    "SCORE_CHURN_BATCH",
    "TRAIN_CHURN_MODEL",
    "DeploymentSpec",
    "EventTrigger",
    "Schedule",
]
