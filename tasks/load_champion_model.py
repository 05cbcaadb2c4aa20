"""Scoring step 1: the champion model, checked against the features it will be given."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core.contracts import ModelVersionRef, ResolvedFeatures
from driftloop.core.errors import ModelSignatureError
from tasks._policy import IO_RETRIES, UNCACHED


def check_signature(model: Any, champion: ModelVersionRef, features: ResolvedFeatures) -> None:
    """Refuse a model whose input signature does not match the features, naming both sides."""
    schema_in = model.metadata.get_input_schema()
    if schema_in is None:
        raise ModelSignatureError(
            f"{champion.name} v{champion.version} has no input signature; driftloop scores only "
            "models logged with one"
        )
    needed = list(schema_in.input_names())
    given = features.names
    missing = [c for c in needed if c not in given]
    extra = [c for c in given if c not in needed]
    if missing or extra:
        raise ModelSignatureError(
            f"{champion.name} v{champion.version} ({champion.uri}) does not match the features: "
            f"its signature needs {missing or 'nothing more'} that the features lack, and the "
            f"features add {extra or 'nothing'} that it does not take. Signature inputs: "
            f"{needed}; features: {given}."
        )


@task(name="load-champion-model", cache_policy=UNCACHED, **IO_RETRIES)
def load_champion_model(
    champion: ModelVersionRef, tracking: MlflowTracking, features: ResolvedFeatures
) -> Any:
    """Load `models:/<name>@champion` (pinned to the version found) and check its signature
    against the features it will be scored on."""
    import mlflow

    tracking.activate()
    model = mlflow.pyfunc.load_model(champion.uri)
    check_signature(model, champion, features)
    get_run_logger().info("Loaded %s v%s (%s)", champion.name, champion.version, champion.uri)
    return model
