"""Rollback step 3: move the `champion` alias back, and say on the version it leaves why."""

from __future__ import annotations

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef
from driftloop.core.errors import RollbackError
from tasks._policy import IO_RETRIES, UNCACHED
from tasks.registry import alias_version


@task(name="move-champion", cache_policy=UNCACHED, **IO_RETRIES)
def move_champion(
    tracking: MlflowTracking, champion: ModelVersionRef, target: ModelVersionRef, reason: str
) -> None:
    """Point `champion` at `target`, if it still points at `champion` (a promotion in between
    wins: RollbackError, not retried, and nothing moves). Tags the version left behind with
    `driftloop.rollback.to_version` and `driftloop.rollback.reason`; its decision stays
    "promoted", so a training of the same data is skipped rather than registered again.

    Idempotent: a retry after the alias moved finds it at `target` and only tags.
    """
    from prefect.runtime import flow_run as runtime_flow_run

    client = tracking.activate()
    name = champion.name
    current = alias_version(client, name, names.ALIAS_CHAMPION)
    if current not in (champion.version, target.version):
        raise RollbackError(
            f"The champion of {name!r} moved from v{champion.version} to v{current} while "
            f"this rollback was planned; not moving it to v{target.version}"
        )
    # Tagged before the alias moves: a resumed run finds what its first attempt was doing.
    tags = {
        names.TAG_ROLLED_BACK_TO: target.version,
        names.TAG_ROLLBACK_REASON: reason[:4000],
        names.TAG_ROLLBACK_FLOW_RUN: str(runtime_flow_run.get_id() or ""),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, champion.version, key, value)
    if current == target.version:
        get_run_logger().info("%r v%s is the champion already", name, current)
        return
    # MLflow has no compare-and-set of an alias: a promotion in the moment between the read
    # above and this write would be overwritten (the window is one request long).
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, target.version)
    get_run_logger().info(
        "Moved %r champion back from v%s to v%s", name, champion.version, target.version
    )
