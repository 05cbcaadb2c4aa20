"""Deployments that watch the churn model and its data: drift, new data, materialization."""

from __future__ import annotations

from deployments.spec import DeploymentSpec, EventTrigger, Schedule
from driftloop.app import demo
from driftloop.core import names

MONITOR_CHURN_DRIFT = DeploymentSpec(
    name="monitor-churn-drift",
    entrypoint="flows.drift_monitoring.monitor_drift",
    description=(
        "Compare the churn champion's training reference with the newest week of production "
        "features (Evidently); emit driftloop.drift.detected or driftloop.drift.checked."
    ),
    schedules=(Schedule(cron="0 * * * *", slug="hourly-drift-check"),),
    triggers=(
        EventTrigger(
            name="check-after-promotion",
            description=(
                "A new churn champion: check its drift at once. The loop has settled when "
                "this check reports driftloop.drift.checked."
            ),
            event=names.EVENT_MODEL_PROMOTED,
            resource_id=names.model_resource_id(demo.DEMO_MODEL_NAME),
        ),
    ),
    concurrency_limit=1,
    collision_strategy="CANCEL_NEW",
    tags=("driftloop", "monitoring"),
)

DETECT_CHURN_DATA = DeploymentSpec(
    name="detect-churn-data",
    entrypoint="flows.new_data.detect_new_data",
    description=(
        "Look for a new revision of the churn dataset in the DVC data registry; emit "
        "driftloop.dataset.updated once per new content hash."
    ),
    schedules=(Schedule(cron="*/5 * * * *", slug="new-data-check"),),
    concurrency_limit=1,
    collision_strategy="CANCEL_NEW",
    tags=("driftloop", "monitoring"),
)

MATERIALIZE_CHURN_FEATURES = DeploymentSpec(
    name="materialize-churn-features",
    entrypoint="flows.materialization.materialize",
    description="Feast materialize_incremental of the churn features into the online store.",
    schedules=(Schedule(cron="*/15 * * * *", slug="materialization"),),
    concurrency_limit=1,
    collision_strategy="CANCEL_NEW",
    tags=("driftloop", "features"),
)

SCORE_CHURN_BATCH = DeploymentSpec(
    name="score-churn-batch",
    entrypoint="flows.batch_scoring.score_batch",
    description="Score the newest churn customers with the champion, on online features.",
    triggers=(
        EventTrigger(
            name="score-on-promotion",
            description="A new churn champion: score the newest customers with it.",
            event=names.EVENT_MODEL_PROMOTED,
            resource_id=names.model_resource_id(demo.DEMO_MODEL_NAME),
        ),
    ),
    # Scoring runs queue rather than cancel: each promotion's batch is written.
    concurrency_limit=1,
    collision_strategy="ENQUEUE",
    tags=("driftloop", "scoring"),
)
