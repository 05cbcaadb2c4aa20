"""Step 7: evaluate a fitted model on the holdout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core.contracts import Metrics, ResolvedFeatures, TableSchema
from driftloop.core.modeling import feature_matrix, score_probabilities
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline


# Not cached: scoring the holdout is cheap, and a fitted model has no stable content hash.
@task(name="evaluate-model", cache_policy=UNCACHED, **NO_RETRIES)
def evaluate_model(
    model: Pipeline, holdout: pd.DataFrame, features: ResolvedFeatures, schema: TableSchema
) -> Metrics:
    """ROC AUC, F1, accuracy and log loss of the model on the holdout rows."""
    proba = model.predict_proba(feature_matrix(holdout, list(features.columns)))[:, 1]
    metrics = score_probabilities(holdout[schema.label_column].to_numpy(), proba)
    get_run_logger().info("Holdout metrics: %s", metrics.as_dict())
    return metrics
