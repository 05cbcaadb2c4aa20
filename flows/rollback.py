"""Roll the champion back: the champion before it serves again, everywhere.

find champion -> plan the rollback -> move the champion alias -> announce it

The announcement is the `driftloop.model.promoted` event every new champion has, with
`rolled_back_from` in its payload, so the same automations follow a rollback as a promotion:
the serving application swaps back (`swap-on-promotion`), the newest batch is scored with the
champion (`score-on-promotion`), its drift is checked, and a person is told. Moving the alias by
hand in the MLflow UI works too; the serving application notices within the serving block's
`alias_poll_s`, but nothing else follows it, and no version records why.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import Rollback
from tasks.announce_rollback import announce_rollback
from tasks.get_champion import get_required_champion
from tasks.move_champion import move_champion
from tasks.plan_rollback import plan_rollback


@flow(name="roll-back-champion", log_prints=True)
def roll_back_champion(
    to_version: Annotated[int, Field(ge=1)] | None = None,
    reason: Annotated[str, Field(min_length=1, max_length=1000)] = "rolled back by a person",
    mlflow_block: str = names.DEFAULT_BLOCK,
) -> Rollback:
    """Make an earlier champion the champion again.

    Only a version that passed its gate once (decision `promoted`) can come back; anything
    else fails with a message naming the version, and the champion does not move. A training
    that promotes between the plan and the move wins: the rollback then fails and moves
    nothing. Resumed after an interruption, it finishes the rollback it had started.

    Args:
        to_version: The version to bring back. Empty: the champion the current one replaced
            (each rollback steps back one promotion; name a version to step forward again).
        reason: Why, recorded on the version rolled back from and in the announcement.
        mlflow_block: Name of the `driftloop-mlflow` block (which registry and model).
    """
    tracking = MlflowTracking.load_named(mlflow_block)
    champion = get_required_champion(tracking)
    source, target = plan_rollback(
        tracking, champion, None if to_version is None else str(to_version)
    )
    move_champion(tracking, source, target, reason)
    return announce_rollback(source, target, reason)
