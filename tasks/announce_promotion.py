"""Step 10: announce a promotion as a Prefect event."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from driftloop import names
from driftloop.contracts import PromotionDecision
from tasks._policy import IN_TRANSACTION, UNCACHED


def promotion_payload(decision: PromotionDecision) -> dict[str, object]:
    return {
        "version": decision.challenger.version,
        "previous_version": decision.champion.version if decision.champion else None,
        "metrics": {
            k: v for k, v in decision.challenger_metrics.as_dict().items() if k != "n_rows"
        },
    }


@task(name="announce-promotion", cache_policy=UNCACHED, **IN_TRANSACTION)
def announce_promotion(decision: PromotionDecision) -> str | None:
    """Emit `driftloop.model.promoted` for the model; automations start scoring from it.

    Prefect attaches the emitting flow and task runs as related resources.
    """
    if not decision.promote:
        return None
    name = decision.challenger.name
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
    get_run_logger().info("Emitted %s for %r v%s", event.event, name, decision.challenger.version)
    return str(event.id)
