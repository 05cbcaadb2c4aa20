"""Drift step 6: `driftloop.drift.detected` or `driftloop.drift.checked`."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from driftloop import names
from driftloop.contracts import DriftResult
from tasks._policy import NO_RETRIES, UNCACHED


def drift_payload(result: DriftResult) -> dict[str, object]:
    return {
        names.PAYLOAD_DRIFT_SHARE: result.drift_share,
        names.PAYLOAD_DRIFTED_COLUMNS: result.drifted_columns,
        names.PAYLOAD_CHAMPION_VERSION: result.champion_version,
        names.PAYLOAD_WINDOW_START: result.window_start,
        names.PAYLOAD_WINDOW_END: result.window_end,
    }


@task(name="announce-drift", cache_policy=UNCACHED, **NO_RETRIES)
def announce_drift(result: DriftResult) -> str:
    """Emit the verdict; an automation starts retraining on `driftloop.drift.detected`.
    Prefect relates the event to this flow run."""
    event_name = names.EVENT_DRIFT_DETECTED if result.detected else names.EVENT_DRIFT_CHECKED
    event = emit_event(
        event=event_name,
        resource={
            "prefect.resource.id": names.model_resource_id(result.model_name),
            "prefect.resource.name": result.model_name,
        },
        payload=drift_payload(result),
    )
    if event is None:
        raise RuntimeError(f"Could not emit {event_name} for {result.model_name!r}")
    get_run_logger().info("Emitted %s for %r", event_name, result.model_name)
    return str(event.id)
