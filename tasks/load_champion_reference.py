"""The champion, the features it was trained on, and the training sample logged with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef
from driftloop.core.errors import DatasetUnreadableError, NoChampionError
from driftloop.core.params import FeatureSelection
from tasks._policy import IO_RETRIES, UNCACHED, by_content
from tasks.register_model import alias_version

if TYPE_CHECKING:
    import pandas as pd


@task(name="find-champion", cache_policy=UNCACHED, **IO_RETRIES)
def find_champion(mlflow: MlflowTracking) -> ModelVersionRef:
    """The version the `champion` alias points to; fails clearly if there is none yet."""
    client = mlflow.activate()
    name = mlflow.registered_model_name
    version = alias_version(client, name, names.ALIAS_CHAMPION)
    if version is None:
        raise NoChampionError(
            f"Registered model {name!r} at {mlflow.tracking_uri} has no {names.ALIAS_CHAMPION!r} "
            "alias yet: train and promote a model first (the train-model deployment)."
        )
    run_id = client.get_model_version(name, version).run_id
    return ModelVersionRef(
        name=name, version=version, run_id=run_id, url=mlflow.model_version_url(version)
    )


@task(name="champion-features", cache_policy=UNCACHED, **IO_RETRIES)
def champion_features(champion: ModelVersionRef, mlflow: MlflowTracking) -> FeatureSelection:
    """The Feast features the champion was trained on, from its run's lineage tags."""
    client = mlflow.activate()
    tags = client.get_run(champion.run_id).data.tags
    refs = [r for r in tags.get(names.TAG_FEAST_FEATURES, "").split(",") if r]
    if not refs:
        raise DatasetUnreadableError(
            f"Run {champion.run_id} of {champion.name} v{champion.version} has no "
            f"{names.TAG_FEAST_FEATURES!r} tag: it was not logged by driftloop's training flow."
        )
    return FeatureSelection(features=refs)


@task(
    name="load-champion-reference",
    cache_policy=by_content("champion"),
    persist_result=True,
    **IO_RETRIES,
)
def load_champion_reference(champion: ModelVersionRef, mlflow: MlflowTracking) -> pd.DataFrame:
    """The training sample logged with the champion. Cached per champion version."""
    import tempfile
    from pathlib import Path

    import mlflow as mlflow_lib
    import pandas as pd

    mlflow.activate()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_lib.artifacts.download_artifacts(
                run_id=champion.run_id, artifact_path=names.REFERENCE_SAMPLE_ARTIFACT, dst_path=tmp
            )
        except Exception as exc:
            raise DatasetUnreadableError(
                f"{champion.name} v{champion.version} (run {champion.run_id}) has no readable "
                f"reference sample at {names.REFERENCE_SAMPLE_ARTIFACT!r}: {exc}"
            ) from exc
        reference = pd.read_parquet(Path(local))
    get_run_logger().info(
        "Reference: %d training rows of %s v%s", len(reference), champion.name, champion.version
    )
    return reference
