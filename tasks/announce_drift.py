"""Drift step 7: `driftloop.drift.detected` or `driftloop.drift.checked`, and
`driftloop.retraining.skipped` when drift cannot be retrained away."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from driftloop.core import names
from driftloop.core.contracts import DriftResult, LabelStatus
from tasks._policy import NO_RETRIES, UNCACHED


def drift_payload(
    result: DriftResult, labels: LabelStatus, mlflow_url: str | None = None
) -> dict[str, object]:
    return {
        names.PAYLOAD_DRIFT_SHARE: result.drift_share,
        names.PAYLOAD_DRIFTED_COLUMNS: result.drifted_columns,
        names.PAYLOAD_CHAMPION_VERSION: result.champion_version,
        names.PAYLOAD_WINDOW_START: result.window_start,
        names.PAYLOAD_WINDOW_END: result.window_end,
        # What a retraining needs: the newest revision as it was when checked.
        names.PAYLOAD_REV: labels.commit,
        names.PAYLOAD_MD5: labels.md5,
        names.PAYLOAD_NEW_LABELS: labels.new_labels,
        names.PAYLOAD_REASON: labels.reason,
        names.PAYLOAD_PREDICTION_DRIFT: (
            result.prediction.model_dump(mode="json") if result.prediction else None
        ),
        # The check's MLflow run: its Evidently report and the drift scores.
        names.PAYLOAD_MLFLOW_URL: mlflow_url,
    }


@task(name="announce-drift", cache_policy=UNCACHED, **NO_RETRIES)
def announce_drift(result: DriftResult, labels: LabelStatus, mlflow_url: str | None = None) -> str:
    """Emit the verdict. Its resource carries `driftloop.new-labels`: the retraining
    automation fires only on drift the dataset has new labels for. Drift without them is
    announced as `driftloop.retraining.skipped` too, for a person to act on. Prefect relates
    the events to this flow run."""
    logger = get_run_logger()
    event_name = names.EVENT_DRIFT_DETECTED if result.detected else names.EVENT_DRIFT_CHECKED
    resource = {
        "prefect.resource.id": names.model_resource_id(result.model_name),
        "prefect.resource.name": result.model_name,
        names.LABEL_NEW_LABELS: str(labels.new_labels).lower(),
    }
    payload = drift_payload(result, labels, mlflow_url)
    event = emit_event(event=event_name, resource=resource, payload=payload)
    if event is None:
        raise RuntimeError(f"Could not emit {event_name} for {result.model_name!r}")
    logger.info("Emitted %s for %r", event_name, result.model_name)
    if result.detected and not labels.new_labels:
        skipped = emit_event(
            event=names.EVENT_RETRAINING_SKIPPED, resource=resource, payload=payload, follows=event
        )
        if skipped is None:
            raise RuntimeError(f"Could not emit {names.EVENT_RETRAINING_SKIPPED}")
        logger.warning("Drift, but retraining is skipped: %s", labels.reason)
    return str(event.id)
