"""Deployments of driftloop's flows, with their schedules and triggers.

This package is the single source of truth: `prefect.yaml` is rendered from it
(`make prefect.yaml`), `make up` deploys that file, and a test fails if the two disagree.
"""

from deployments.spec import DeploymentSpec
from deployments.training import TRAIN_CHURN_MODEL

DEPLOYMENTS: tuple[DeploymentSpec, ...] = (TRAIN_CHURN_MODEL,)

__all__ = ["DEPLOYMENTS", "TRAIN_CHURN_MODEL", "DeploymentSpec"]
