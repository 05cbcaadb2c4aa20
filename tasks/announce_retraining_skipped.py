"""Training: a retraining that a drift or degradation signal asked for, and that cannot change
anything, is announced for a person."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef, TrainingPlan
from driftloop.core.params import TriggerContext
from driftloop.core.planning import new_labels_reason
from tasks._policy import NO_RETRIES, UNCACHED


@task(name="announce-retraining-skipped", cache_policy=UNCACHED, **NO_RETRIES)
def announce_retraining_skipped(
    plan: TrainingPlan,
    trigger: TriggerContext,
    model_name: str,
    champion: ModelVersionRef | None,
    mlflow_url: str | None = None,
) -> str:
    """Emit `driftloop.retraining.skipped`: the signal in `trigger` asked for a retraining,
    but a version was already trained on exactly this data; new labels are needed. Returns
    the reason given."""
    reason = plan.skip or ""
    if champion is not None and plan.existing_version:
        _, reason = new_labels_reason(
            champion.version, plan.dataset, (plan.existing_version, plan.existing_decision)
        )
    event = emit_event(
        event=names.EVENT_RETRAINING_SKIPPED,
        resource={
            "prefect.resource.id": names.model_resource_id(model_name),
            "prefect.resource.name": model_name,
            names.LABEL_NEW_LABELS: "false",
        },
        payload={
            names.PAYLOAD_REASON: reason,
            names.PAYLOAD_REV: plan.dataset.commit,
            names.PAYLOAD_MD5: plan.dataset.md5,
            "trigger": trigger.reason,
            "existing_version": plan.existing_version,
            # The version already trained on this data, in MLflow.
            names.PAYLOAD_MLFLOW_URL: mlflow_url,
        },
    )
    if event is None:
        raise RuntimeError(f"Could not emit {names.EVENT_RETRAINING_SKIPPED}")
    get_run_logger().warning("Retraining asked for by %s skipped: %s", trigger.reason, reason)
    return reason
