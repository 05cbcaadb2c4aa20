"""Rollback step 2: which earlier champion the champion goes back to (a rule in
driftloop.core.rollback), checked against every version the registry holds."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run as runtime_flow_run

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef
from driftloop.core.rollback import rollback_target
from tasks._policy import IO_RETRIES, UNCACHED
from tasks.registry import version_ref


@task(name="plan-rollback", cache_policy=UNCACHED, **IO_RETRIES)
def plan_rollback(
    tracking: MlflowTracking, champion: ModelVersionRef, to_version: str | None
) -> tuple[ModelVersionRef, ModelVersionRef]:
    """(the champion to roll back from, the version to make champion again): `to_version`,
    or the champion the current one replaced. Fails with a RollbackError (not retried) naming
    the version and why it cannot be the champion: unknown, never promoted, or the champion
    already.

    A run resumed after an interruption (driftloop resumes interrupted runs with the same
    parameters) finds the version its first attempt tagged, and finishes that rollback
    instead of stepping back once more from where the first attempt left the alias.
    """
    client = tracking.activate()
    found = client.search_model_versions(f"name='{champion.name}'")
    by_version = {str(v.version): v for v in found}
    flow_run_id = runtime_flow_run.get_id()
    earlier = [
        v for v in found
        if flow_run_id and v.tags.get(names.TAG_ROLLBACK_FLOW_RUN) == str(flow_run_id)
    ]  # fmt: skip
    if earlier:
        source = earlier[0]
        target = by_version[source.tags[names.TAG_ROLLED_BACK_TO]]
        get_run_logger().info(
            "Resuming this run's rollback of %r from v%s to v%s",
            champion.name, source.version, target.version,
        )  # fmt: skip
        return version_ref(tracking, source), version_ref(tracking, target)
    decisions = {version: v.tags.get(names.TAG_DECISION) for version, v in by_version.items()}
    target = by_version[rollback_target(champion, to_version, decisions)]
    get_run_logger().info(
        "Rolling %r back from v%s to v%s", champion.name, champion.version, target.version
    )
    return champion, version_ref(tracking, target)
