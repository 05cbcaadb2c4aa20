"""The champion, the features it was trained on, and the training sample logged with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef
from driftloop.core.errors import DatasetUnreadableError
from driftloop.core.params import FeatureSelection
from tasks._policy import IO_RETRIES, UNCACHED, by_content

if TYPE_CHECKING:
    import pandas as pd


@task(name="champion-features", cache_policy=UNCACHED, **IO_RETRIES)
def champion_features(champion: ModelVersionRef, tracking: MlflowTracking) -> FeatureSelection:
    """The Feast features the champion was trained on, from its run's lineage tags."""
    if champion.run_id is None:
        raise DatasetUnreadableError(
            f"{champion.name} v{champion.version} has no source run: it was not registered "
            "from an MLflow run, so it carries no feature lineage."
        )
    client = tracking.activate()
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
def load_champion_reference(champion: ModelVersionRef, tracking: MlflowTracking) -> pd.DataFrame:
    """The training sample logged with the champion. Cached per champion version."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pandas as pd

    tracking.activate()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
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
