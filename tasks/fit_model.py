"""Step 6: fit a scikit-learn pipeline (preprocessing plus model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core.contracts import ResolvedFeatures, TableSchema
from driftloop.core.modeling import build_pipeline, feature_matrix
from driftloop.core.params import ModelSpec
from tasks._policy import NO_RETRIES, by_content

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline


@task(
    name="fit-model",
    cache_policy=by_content("train", "features", "schema", "spec", "random_state"),
    persist_result=True,
    **NO_RETRIES,
)
def fit_model(
    train: pd.DataFrame,
    features: ResolvedFeatures,
    schema: TableSchema,
    spec: ModelSpec,
    random_state: int,
) -> Pipeline:
    """Fit the pipeline the spec describes. Cached on the training rows' content, the spec and
    this code; a pure computation, so never retried."""
    import time

    pipeline = build_pipeline(spec, list(features.columns), random_state)
    started = time.perf_counter()
    pipeline.fit(feature_matrix(train, list(features.columns)), train[schema.label_column])
    get_run_logger().info(
        "Trained %s on %d rows in %.1fs", spec.family, len(train), time.perf_counter() - started
    )
    return pipeline
