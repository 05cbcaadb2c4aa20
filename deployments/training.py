"""The training deployment of the churn demo."""

from __future__ import annotations

from deployments.spec import DeploymentSpec
from driftloop import demo

TRAIN_CHURN_MODEL = DeploymentSpec(
    name="train-churn-model",
    entrypoint="flows/training.py:train",
    description=(
        "Train the churn model on the demo data registry and Feast features; promote it to "
        "champion in MLflow only if it beats the current champion."
    ),
    parameters={"features": {"feature_service": demo.DEMO_FEATURE_SERVICE}},
    tags=("driftloop", "training"),
)
