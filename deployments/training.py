"""The training deployment of the churn demo: nightly, on new data and on drift."""

from __future__ import annotations

from deployments.spec import DeploymentSpec, EventTrigger, Schedule
from driftloop.app import demo
from driftloop.core import names

TRAIN_CHURN_MODEL = DeploymentSpec(
    name="train-churn-model",
    entrypoint="flows.training.train",
    description=(
        "Train the churn model on the demo data registry and Feast features; promote it to "
        "champion in MLflow only if it beats the current champion. Runs nightly, on each new "
        "dataset revision and on detected drift; one run at a time, the newest data wins."
    ),
    # An 8-trial search keeps the demo's loop (new data to new champion) near a minute; raise
    # it here, or per run in the UI's custom-run form, for a wider search.
    parameters={
        "features": {"feature_service": demo.DEMO_FEATURE_SERVICE},
        "search": {"n_trials": 8},
    },
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
            description="A new revision of the churn dataset: train on it (or on a newer one, "
            "if more arrived while it waited for the training slot).",
            event=names.EVENT_DATASET_UPDATED,
            resource_id=names.dataset_resource_id(demo.DEMO_DATASET),
            parameters={
                "rev": "{{ event.payload.rev }}",
                "trigger": {"reason": names.REASON_DATASET_UPDATED},
            },
        ),
        EventTrigger(
            name="retrain-on-drift",
            description="The churn champion's features drifted and the dataset holds labels it "
            "was not fit on: retrain on the revision the check saw, or a newer one (at most "
            "once per 10 minutes, however many alerts arrive). Drift without new labels "
            "starts nothing; it is announced as driftloop.retraining.skipped.",
            event=names.EVENT_DRIFT_DETECTED,
            within_s=600,
            resource_id=names.model_resource_id(demo.DEMO_MODEL_NAME),
            labels={names.LABEL_NEW_LABELS: "true"},
            parameters={
                "rev": "{{ event.payload.rev }}",
                "trigger": {
                    "reason": names.REASON_DRIFT_DETECTED,
                    "drifted_columns": "{{ event.payload.drifted_columns }}",
                },
            },
        ),
    ),
    # One training at a time protects the machine; runs that find the slot taken wait for it
    # (ENQUEUE), so no new revision is dropped. Each run trains the newest revision when it
    # starts, so the queue collapses: older revisions are superseded, duplicates skipped.
    concurrency_limit=1,
    collision_strategy="ENQUEUE",
    tags=("driftloop", "training"),
)
