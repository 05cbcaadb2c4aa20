"""The training deployment of the churn demo: nightly, on new data and on drift."""

from __future__ import annotations

from deployments.spec import DeploymentSpec, EventTrigger, Schedule
from driftloop import demo, names

TRAIN_CHURN_MODEL = DeploymentSpec(
    name="train-churn-model",
    entrypoint="flows.training.train",
    description=(
        "Train the churn model on the demo data registry and Feast features; promote it to "
        "champion in MLflow only if it beats the current champion. Runs nightly, on each new "
        "dataset revision and on detected drift; one run at a time."
    ),
    parameters={"features": {"feature_service": demo.DEMO_FEATURE_SERVICE}},
    schedules=(
        Schedule(
            cron="0 2 * * *",
            slug="nightly-retraining",
            parameters={"trigger": {"reason": names.REASON_SCHEDULE}},
        ),
    ),
    triggers=(
        EventTrigger(
            name="train-on-new-data",
            description="A new revision of the churn dataset: train on exactly that revision.",
            event=names.EVENT_DATASET_UPDATED,
            resource_id=names.dataset_resource_id(demo.DEMO_DATASET),
            parameters={
                "rev": "{{ event.payload.rev }}",
                "trigger": {"reason": names.REASON_DATASET_UPDATED},
            },
        ),
        EventTrigger(
            name="retrain-on-drift",
            description="The churn champion's features drifted: retrain on the newest data.",
            event=names.EVENT_DRIFT_DETECTED,
            resource_id=names.model_resource_id(demo.DEMO_MODEL_NAME),
            parameters={
                "trigger": {
                    "reason": names.REASON_DRIFT_DETECTED,
                    "drifted_columns": "{{ event.payload.drifted_columns }}",
                }
            },
        ),
    ),
    # An event storm must not become a training storm: while one run holds the slot, new runs
    # are cancelled at once (visible as Cancelled in the UI and the worker's log).
    concurrency_limit=1,
    collision_strategy="CANCEL_NEW",
    tags=("driftloop", "training"),
)
