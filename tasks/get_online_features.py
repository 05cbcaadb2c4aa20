"""Scoring step 3: the entities' current feature values from the Feast online store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.feast import FeastFeatureStore
from driftloop.core.contracts import ResolvedFeatures
from driftloop.core.errors import FeatureRetrievalError
from tasks._policy import IO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="get-online-features", cache_policy=UNCACHED, **IO_RETRIES)
def get_online_features(
    feast: FeastFeatureStore, features: ResolvedFeatures, entities: pd.DataFrame
) -> pd.DataFrame:
    """Read the features from the online store, one row per entity, in the given order.

    Entities the online store knows nothing about (every feature null) are counted and named;
    if none of them has features, the store was not materialized and the task fails.
    """
    store = feast.store()
    rows = entities.to_dict(orient="records")
    frame = store.get_online_features(features=features.refs, entity_rows=rows).to_df()
    if len(frame) != len(entities):
        raise FeatureRetrievalError(
            f"Feast returned {len(frame)} online rows for {len(entities)} entities"
        )
    empty = frame[features.names].isna().all(axis=1)
    if empty.all():
        raise FeatureRetrievalError(
            f"The online store of {feast.repo_path} has no features for any of the "
            f"{len(entities)} entities: materialize it first (the materialize-features flow)."
        )
    if empty.any():
        keys = list(entities.columns)
        examples = frame.loc[empty, keys].head(5).to_dict(orient="records")
        get_run_logger().warning(
            "%d of %d entities have no online features at all (e.g. %s); they are scored on "
            "imputed values and counted in the scoring summary",
            int(empty.sum()), len(frame), examples,
        )  # fmt: skip
    return frame
