"""Step 10: announce the gate's decision as a Prefect event, once: a promotion (and mark it
done) or a rejection."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event
from prefect.runtime import flow_run as runtime_flow_run

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import PromotionDecision
from driftloop.core.events import confirm_event
from tasks._policy import IN_TRANSACTION, UNCACHED


def decision_payload(decision: PromotionDecision) -> dict[str, object]:
    return {
        "version": decision.challenger.version,
        "previous_version": decision.champion.version if decision.champion else None,
        "metrics": {
            k: v for k, v in decision.challenger_metrics.as_dict().items() if k != "n_rows"
        },
        names.PAYLOAD_REASON: decision.reason,
        names.PAYLOAD_MLFLOW_URL: decision.challenger.url,
    }


def emit_model_event(event_name: str, model_name: str, payload: dict[str, object]) -> str:
    """Emit an event about a registered model and wait until the server stored it; its id."""
    event = emit_event(
        event=event_name,
        resource={
            "prefect.resource.id": names.model_resource_id(model_name),
            "prefect.resource.name": model_name,
        },
        payload=payload,
    )
    if event is None:
        raise RuntimeError(f"Could not emit {event_name} for {model_name!r}")
    confirm_event(event.id)
    return str(event.id)


def find_decision_event(
    event_name: str, model_name: str, version: str, flow_run_id: str
) -> str | None:
    """The id of an `event_name` event for this version that this flow run emitted already
    (in an attempt that was interrupted before it finished)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventRelatedFilter,
        EventResourceFilter,
    )

    event_filter = EventFilter(
        event=EventNameFilter(name=[event_name]),
        resource=EventResourceFilter(id=[names.model_resource_id(model_name)]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        page = client.read_events(event_filter, limit=50)
    for event in page.events:
        if str(event.payload.get("version")) == version:
            return str(event.id)
    return None


@task(name="announce-decision", cache_policy=UNCACHED, **IN_TRANSACTION)
def announce_decision(decision: PromotionDecision, tracking: MlflowTracking) -> str:
    """Emit `driftloop.model.promoted` (automations start scoring from it, and notify) or
    `driftloop.model.rejected` (a person is told why), wait until the server stored it; a
    promotion is then recorded as "promoted". Returns the event's id.

    Idempotent: a run that resumes an interrupted promotion does not emit a second event for
    the same version. Prefect attaches the emitting flow and task runs as related resources.
    """
    name, version = decision.challenger.name, decision.challenger.version
    event_name = names.EVENT_MODEL_PROMOTED if decision.promote else names.EVENT_MODEL_REJECTED
    logger = get_run_logger()
    flow_run_id = runtime_flow_run.get_id()
    event_id = find_decision_event(event_name, name, version, flow_run_id) if flow_run_id else None
    if event_id is None:
        event_id = emit_model_event(event_name, name, decision_payload(decision))
        logger.info("Emitted %s for %r v%s", event_name, name, version)
    else:
        logger.info("%r v%s was announced already (event %s)", name, version, event_id)
    if decision.promote:
        client = tracking.activate()
        client.set_model_version_tag(name, version, names.TAG_DECISION, names.DECISION_PROMOTED)
        if decision.challenger.run_id:
            client.set_tag(decision.challenger.run_id, names.TAG_DECISION, names.DECISION_PROMOTED)
    return event_id
