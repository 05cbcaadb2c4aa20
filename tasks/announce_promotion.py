"""Step 10: announce a promotion as a Prefect event, once, and mark it done."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event
from prefect.runtime import flow_run as runtime_flow_run

from blocks.mlflow import MlflowTracking
from driftloop import names
from driftloop.contracts import PromotionDecision
from driftloop.events import confirm_event
from tasks._policy import IN_TRANSACTION, UNCACHED


def promotion_payload(decision: PromotionDecision) -> dict[str, object]:
    return {
        "version": decision.challenger.version,
        "previous_version": decision.champion.version if decision.champion else None,
        "metrics": {
            k: v for k, v in decision.challenger_metrics.as_dict().items() if k != "n_rows"
        },
    }


def find_promotion_event(model_name: str, version: str, flow_run_id: str) -> str | None:
    """The id of a `driftloop.model.promoted` event for this version that this flow run
    emitted already (in an attempt that was interrupted before it finished)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventRelatedFilter,
        EventResourceFilter,
    )

    event_filter = EventFilter(
        event=EventNameFilter(name=[names.EVENT_MODEL_PROMOTED]),
        resource=EventResourceFilter(id=[names.model_resource_id(model_name)]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        page = client.read_events(event_filter, limit=50)
    for event in page.events:
        if str(event.payload.get("version")) == version:
            return str(event.id)
    return None


@task(name="announce-promotion", cache_policy=UNCACHED, **IN_TRANSACTION)
def announce_promotion(decision: PromotionDecision, mlflow: MlflowTracking) -> str | None:
    """Emit `driftloop.model.promoted` for the model (automations start scoring from it),
    wait until the server stored it, then record the decision as "promoted".

    Idempotent: a run that resumes an interrupted promotion does not emit a second event for
    the same version. Prefect attaches the emitting flow and task runs as related resources.
    """
    if not decision.promote:
        return None
    name, version = decision.challenger.name, decision.challenger.version
    logger = get_run_logger()
    flow_run_id = runtime_flow_run.get_id()
    event_id = find_promotion_event(name, version, flow_run_id) if flow_run_id else None
    if event_id is None:
        event = emit_event(
            event=names.EVENT_MODEL_PROMOTED,
            resource={
                "prefect.resource.id": names.model_resource_id(name),
                "prefect.resource.name": name,
            },
            payload=promotion_payload(decision),
        )
        if event is None:
            raise RuntimeError(f"Could not emit {names.EVENT_MODEL_PROMOTED} for {name!r}")
        confirm_event(event.id)
        event_id = str(event.id)
        logger.info("Emitted %s for %r v%s", names.EVENT_MODEL_PROMOTED, name, version)
    else:
        logger.info("%r v%s was announced already (event %s)", name, version, event_id)
    client = mlflow.activate()
    client.set_model_version_tag(name, version, names.TAG_DECISION, names.DECISION_PROMOTED)
    if decision.challenger.run_id:
        client.set_tag(decision.challenger.run_id, names.TAG_DECISION, names.DECISION_PROMOTED)
    return event_id
