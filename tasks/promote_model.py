"""Step 9d: move the `champion` alias, atomically, if the gate said so."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.transactions import Transaction, get_transaction

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import PromotionDecision
from tasks._policy import IN_TRANSACTION, UNCACHED
from tasks.registry import alias_version, restore_alias


class ChampionMovedError(RuntimeError):
    """Another run moved the champion while this one was evaluating against it."""


@task(name="promote-model", cache_policy=UNCACHED, **IN_TRANSACTION)
def promote_model(decision: PromotionDecision, tracking: MlflowTracking) -> str | None:
    """Point `champion` at the challenger; returns the previous champion version.

    One alias write is atomic in MLflow. Before writing, the champion is re-read: if it moved
    since it was evaluated, this run's comparison is stale and it refuses to promote.
    """
    if not decision.promote:
        return None
    client = tracking.activate()
    name = tracking.registered_model_name
    evaluated = decision.champion.version if decision.champion else None
    current = alias_version(client, name, names.ALIAS_CHAMPION)
    resuming = decision.resumed and current == decision.challenger.version
    if current != evaluated and not resuming:
        raise ChampionMovedError(
            f"The champion of {name!r} moved from v{evaluated} to v{current} while this run "
            "evaluated against it; not promoting on a stale comparison"
        )
    txn = get_transaction()
    if txn is not None:
        txn.set("tracking", tracking)
        txn.set("previous_champion", evaluated)
        txn.set("previous_challenger", alias_version(client, name, names.ALIAS_CHALLENGER))
    if resuming:
        # Moved by an interrupted attempt of this same training (see decide-promotion).
        get_run_logger().info("%r v%s is the champion already", name, current)
        return evaluated
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, decision.challenger.version)
    if alias_version(client, name, names.ALIAS_CHALLENGER) == decision.challenger.version:
        client.delete_registered_model_alias(name, names.ALIAS_CHALLENGER)
    get_run_logger().info(
        "Promoted %r v%s to champion (was v%s)", name, decision.challenger.version, current
    )
    return current


@promote_model.on_rollback
def _restore_champion(txn: Transaction) -> None:
    """A later step failed: put the previous champion (and challenger) back."""
    tracking: MlflowTracking | None = txn.get("tracking", None)
    if tracking is None:  # the gate said no; nothing was moved
        return
    client = tracking.activate()
    name = tracking.registered_model_name
    restore_alias(client, name, names.ALIAS_CHAMPION, txn.get("previous_champion"))
    restore_alias(client, name, names.ALIAS_CHALLENGER, txn.get("previous_challenger"))
