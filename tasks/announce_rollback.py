"""Rollback step 4: announce the champion that came back, as any new champion is announced."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run as runtime_flow_run

from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef, Rollback
from tasks._policy import IO_RETRIES, UNCACHED
from tasks.announce_decision import emit_model_event, find_decision_event


@task(name="announce-rollback", cache_policy=UNCACHED, **IO_RETRIES)
def announce_rollback(champion: ModelVersionRef, target: ModelVersionRef, reason: str) -> Rollback:
    """Emit `driftloop.model.promoted` for `target`, with `rolled_back_from` in the payload,
    and wait until the server stored it. The automations treat it as the new champion it is:
    the serving application swaps back, the newest batch is scored with it, its drift is
    checked, and a person is told.

    Idempotent: a retry does not emit a second event for the same version in this run.
    """
    name = champion.name
    said = f"rolled back from v{champion.version}: {reason}"
    flow_run_id = runtime_flow_run.get_id()
    event_id = (
        find_decision_event(names.EVENT_MODEL_PROMOTED, name, target.version, flow_run_id)
        if flow_run_id
        else None
    )
    if event_id is None:
        event_id = emit_model_event(
            names.EVENT_MODEL_PROMOTED, name,
            {
                "version": target.version,
                "previous_version": champion.version,
                names.PAYLOAD_ROLLED_BACK_FROM: champion.version,
                names.PAYLOAD_REASON: said,
                names.PAYLOAD_MLFLOW_URL: target.url,
            },
        )  # fmt: skip
    get_run_logger().info("%r v%s is the champion again (%s)", name, target.version, said)
    return Rollback(
        model_name=name, from_version=champion.version, to_version=target.version,
        reason=reason, event_id=event_id,
    )  # fmt: skip
