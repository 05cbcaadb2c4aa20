"""The model registry as driftloop uses it: aliases and the one champion lookup.

Not a pipeline step: the registry rules the steps share (register, evaluate, promote, monitor,
score), and the service and tests ask the same questions through it. Aliases are read from the
registered model itself (`RegisteredModel.aliases`), so a missing model or alias is a value,
not an error message to recognise.

Example:
    >>> champion = find_champion(MlflowTracking.load_named("default"))  # doctest: +SKIP
    >>> champion.uri if champion else "no champion yet"  # doctest: +SKIP
    'models:/churn-model/3'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef
from driftloop.core.errors import NoChampionError

if TYPE_CHECKING:
    from mlflow import MlflowClient


def model_aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    """Alias -> version of a registered model; empty if the model does not exist yet."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return {}
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None if the alias (or the model) does not exist."""
    return model_aliases(client, model_name).get(alias)


def restore_alias(client: MlflowClient, model_name: str, alias: str, version: str | None) -> None:
    """Point `alias` back at `version`, or remove it if it pointed nowhere before."""
    if version is None:
        if alias_version(client, model_name, alias) is not None:
            client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, version)


def find_champion(tracking: MlflowTracking) -> ModelVersionRef | None:
    """The version the `champion` alias points to now, with its decision tags, or None before
    the first promotion."""
    client = tracking.activate()
    name = tracking.registered_model_name
    version = alias_version(client, name, names.ALIAS_CHAMPION)
    if version is None:
        return None
    return version_ref(tracking, client.get_model_version(name, version))


def version_ref(tracking: MlflowTracking, found: Any) -> ModelVersionRef:
    """An MLflow `ModelVersion` as driftloop refers to it: with its decision tags and its
    page in the MLflow UI."""
    version = str(found.version)
    return ModelVersionRef(
        name=found.name,
        version=version,
        run_id=found.run_id,
        url=tracking.model_version_url(version),
        decision=found.tags.get(names.TAG_DECISION),
        compared_to=found.tags.get(names.TAG_COMPARED_TO),
        fitted_until=found.tags.get(names.TAG_FITTED_UNTIL),
    )


def require_champion(tracking: MlflowTracking) -> ModelVersionRef:
    """The champion, or :class:`NoChampionError` naming the model and the tracking server."""
    champion = find_champion(tracking)
    if champion is None:
        raise NoChampionError(
            f"Registered model {tracking.registered_model_name!r} at {tracking.tracking_uri} "
            f"has no {names.ALIAS_CHAMPION!r} alias yet: train and promote a model first (a "
            f"run of the {names.FLOW_TRAIN!r} flow)."
        )
    return champion
