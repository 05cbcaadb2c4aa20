"""Step 9b: find the current champion and score it on the challenger's holdout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core.contracts import (
    ChampionEvaluation,
    ModelVersionRef,
    ResolvedFeatures,
    TableSchema,
)
from driftloop.core.modeling import feature_matrix, positive_proba, score_probabilities
from tasks._policy import IN_TRANSACTION, by_content

if TYPE_CHECKING:
    import pandas as pd


@task(
    name="evaluate-champion",
    cache_policy=by_content("champion", "holdout", "features", "schema"),
    persist_result=True,
    **IN_TRANSACTION,
)
def evaluate_champion(
    champion: ModelVersionRef | None,
    holdout: pd.DataFrame,
    features: ResolvedFeatures,
    schema: TableSchema,
    tracking: MlflowTracking,
) -> ChampionEvaluation:
    """Score the champion on exactly the rows the challenger was judged on.

    If the champion needs inputs this holdout does not have (its features changed), it cannot
    be compared; the evaluation says why instead of guessing.
    """
    import mlflow

    if champion is None:
        return ChampionEvaluation(champion=None)
    tracking.activate()
    model = mlflow.pyfunc.load_model(champion.uri)
    schema_in = model.metadata.get_input_schema()
    needed = schema_in.input_names() if schema_in else features.names
    missing = [c for c in needed if c not in holdout.columns]
    if missing:
        reason = f"champion v{champion.version} needs inputs {missing} that this data lacks"
        get_run_logger().warning("Champion not comparable: %s", reason)
        return ChampionEvaluation(champion=champion, not_comparable_reason=reason)
    by_name = {c.name: c for c in features.columns}
    columns = [by_name[c] for c in needed if c in by_name]
    unknown = [c for c in needed if c not in by_name]
    if unknown:
        reason = f"champion v{champion.version} uses inputs {unknown} that are not features now"
        return ChampionEvaluation(champion=champion, not_comparable_reason=reason)
    proba = positive_proba(model.predict(feature_matrix(holdout, columns)))
    metrics = score_probabilities(holdout[schema.label_column].to_numpy(), proba)
    get_run_logger().info("Champion v%s on this holdout: %s", champion.version, metrics.as_dict())
    return ChampionEvaluation(champion=champion, metrics=metrics)
