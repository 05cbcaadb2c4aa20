"""Step 9a: register the logged model as a new version and mark it as the challenger."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.transactions import Transaction, get_transaction

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import LoggedRun, ModelVersionRef
from tasks._policy import IN_TRANSACTION, UNCACHED


def alias_version(client, model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None if the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if "not found" in str(exc).lower() or "RESOURCE_DOES_NOT_EXIST" in str(exc):
            return None
        raise


def restore_alias(client, model_name: str, alias: str, version: str | None) -> None:
    if version is None:
        if alias_version(client, model_name, alias) is not None:
            client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, version)


@task(name="register-model-version", cache_policy=UNCACHED, **IN_TRANSACTION)
def register_model_version(
    run: LoggedRun, mlflow: MlflowTracking, tags: dict[str, str]
) -> ModelVersionRef:
    """Register the run's model (once: a rerun of a cached run reuses its version) and point
    the `challenger` alias at it unless it already is the champion."""
    import mlflow as mlflow_lib

    client = mlflow.activate()
    name = mlflow.registered_model_name
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
        version = str(mlflow_lib.register_model(run.model_uri, name, tags=tags).version)

    previous_challenger = alias_version(client, name, names.ALIAS_CHALLENGER)
    if alias_version(client, name, names.ALIAS_CHAMPION) != version:
        client.set_registered_model_alias(name, names.ALIAS_CHALLENGER, version)

    txn = get_transaction()
    if txn is not None:
        txn.set("mlflow", mlflow)
        txn.set("version", version)
        txn.set("created", created)
        txn.set("previous_challenger", previous_challenger)
    get_run_logger().info(
        "%s version %s of %r", "Registered" if created else "Reusing", version, name
    )
    return ModelVersionRef(
        name=name, version=version, run_id=run.run_id, url=mlflow.model_version_url(version)
    )


@register_model_version.on_rollback
def _undo_registration(txn: Transaction) -> None:
    """A later step failed: restore the challenger alias and mark the new version as rolled
    back, so the registry looks as it did before this run (the version stays as evidence)."""
    mlflow: MlflowTracking = txn.get("mlflow")
    client = mlflow.activate()
    name = mlflow.registered_model_name
    restore_alias(client, name, names.ALIAS_CHALLENGER, txn.get("previous_challenger"))
    if txn.get("created"):
        client.set_model_version_tag(
            name, txn.get("version"), names.TAG_DECISION, names.DECISION_ROLLED_BACK
        )
