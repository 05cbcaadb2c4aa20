"""Rollback step 2: which earlier champion the champion goes back to (a rule in
driftloop.core.rollback), checked against every version the registry holds."""

from __future__ import annotations

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef
from driftloop.core.rollback import rollback_target
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="plan-rollback", cache_policy=UNCACHED, **IO_RETRIES)
def plan_rollback(
    tracking: MlflowTracking, champion: ModelVersionRef, to_version: str | None
) -> ModelVersionRef:
    """The version to make champion again: `to_version`, or the champion the current one
    replaced. Fails with a RollbackError (not retried) naming the version and why it cannot
    be the champion: unknown, never promoted, or the champion already."""
    client = tracking.activate()
    found = client.search_model_versions(f"name='{champion.name}'")
    by_version = {str(v.version): v for v in found}
    decisions = {version: v.tags.get(names.TAG_DECISION) for version, v in by_version.items()}
    target = by_version[rollback_target(champion, to_version, decisions)]
    get_run_logger().info(
        "Rolling %r back from v%s to v%s", champion.name, champion.version, target.version
    )
    return ModelVersionRef(
        name=champion.name,
        version=str(target.version),
        run_id=target.run_id,
        url=tracking.model_version_url(str(target.version)),
        decision=target.tags.get(names.TAG_DECISION),
        compared_to=target.tags.get(names.TAG_COMPARED_TO),
        fitted_until=target.tags.get(names.TAG_FITTED_UNTIL),
    )
