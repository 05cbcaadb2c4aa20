"""Step 9a: register the logged model as a new version and mark it as the challenger."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.transactions import Transaction, get_transaction

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import LoggedRun, ModelVersionRef
from tasks._policy import IN_TRANSACTION, UNCACHED
from tasks.registry import alias_version, restore_alias


@task(name="register-model-version", cache_policy=UNCACHED, **IN_TRANSACTION)
def register_model_version(
    run: LoggedRun, tracking: MlflowTracking, tags: dict[str, str]
) -> ModelVersionRef:
    """Register the run's model (once: a rerun of a cached run reuses its version) and point
    the `challenger` alias at it unless it already is the champion."""
    import mlflow

    client = tracking.activate()
    name = tracking.registered_model_name
    existing = client.search_model_versions(f"name='{name}' and run_id='{run.run_id}'")
    created = not existing
    if existing:
        version = str(max(int(v.version) for v in existing))
        # The same model under another gate policy: its fingerprint is the new one now.
        if names.TAG_TRAINING_FINGERPRINT in tags:
            client.set_model_version_tag(
                name, version, names.TAG_TRAINING_FINGERPRINT, tags[names.TAG_TRAINING_FINGERPRINT]
            )
    else:
        version = str(mlflow.register_model(run.model_uri, name, tags=tags).version)

    previous_challenger = alias_version(client, name, names.ALIAS_CHALLENGER)
    if alias_version(client, name, names.ALIAS_CHAMPION) != version:
        client.set_registered_model_alias(name, names.ALIAS_CHALLENGER, version)

    txn = get_transaction()
    if txn is not None:
        txn.set("tracking", tracking)
        txn.set("version", version)
        txn.set("created", created)
        txn.set("previous_challenger", previous_challenger)
    get_run_logger().info(
        "%s version %s of %r", "Registered" if created else "Reusing", version, name
    )
    return ModelVersionRef(
        name=name, version=version, run_id=run.run_id, url=tracking.model_version_url(version)
    )


@register_model_version.on_rollback
def _undo_registration(txn: Transaction) -> None:
    """A later step failed: restore the challenger alias and mark the new version as rolled
    back, so the registry looks as it did before this run (the version stays as evidence)."""
    tracking: MlflowTracking = txn.get("tracking")
    client = tracking.activate()
    name = tracking.registered_model_name
    restore_alias(client, name, names.ALIAS_CHALLENGER, txn.get("previous_challenger"))
    if txn.get("created"):
        client.set_model_version_tag(
            name, txn.get("version"), names.TAG_DECISION, names.DECISION_ROLLED_BACK
        )
