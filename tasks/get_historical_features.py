"""Step 3: point-in-time join of Feast features onto the labeled entity rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.feast import FeastFeatureStore
from driftloop.core.contracts import DatasetVersion, ResolvedFeatures, TableSchema
from driftloop.core.errors import FeatureRetrievalError
from driftloop.core.params import DataQualityPolicy
from tasks._policy import IO_RETRIES, by_content

if TYPE_CHECKING:
    import pandas as pd

_SHOW = 5


@task(
    name="get-historical-features",
    cache_policy=by_content("entities", "features", "schema", "quality"),
    persist_result=True,
    **IO_RETRIES,
)
def get_historical_features(
    entities: pd.DataFrame,
    dataset: DatasetVersion,
    features: ResolvedFeatures,
    schema: TableSchema,
    feast: FeastFeatureStore,
    quality: DataQualityPolicy,
) -> pd.DataFrame:
    """Join features as of each row's timestamp. Every row in comes out, or the task fails.

    Feast silently drops rows whose entity has feature data, but none inside a view's TTL; this
    task counts rows in and out and names the dropped ones. It also fails when any feature is
    null in more than the allowed share of rows. Cached on the entity rows' content and the
    features' fingerprint (definitions and offline data).
    """
    import pandas as pd

    logger = get_run_logger()
    keys = [*schema.entity_columns, schema.timestamp_column]
    store = feast.store()
    request = entities.rename(columns={schema.timestamp_column: "event_timestamp"})
    job = store.get_historical_features(entity_df=request, features=features.refs)
    joined = job.to_df().rename(columns={"event_timestamp": schema.timestamp_column})

    rows_in, rows_out = len(entities), len(joined)
    logger.info("Feast point-in-time join: %d entity rows in, %d rows out", rows_in, rows_out)
    if rows_out != rows_in:
        merged = entities[keys].merge(joined[keys], on=keys, how="left", indicator=True)
        dropped = merged[merged["_merge"] == "left_only"][keys]
        examples = "; ".join(
            ", ".join(f"{k}={row[k]}" for k in keys) for _, row in dropped.head(_SHOW).iterrows()
        )
        ttls = ", ".join(f"{v}: {s / 86400:g} days" for v, s in features.ttl_seconds.items())
        raise FeatureRetrievalError(
            f"Feast returned {rows_out} of {rows_in} entity rows for {dataset.short}: "
            f"{rows_in - rows_out} row(s) were dropped because their entity has feature data, "
            f"but none inside a feature view's TTL ({ttls}). First dropped: {examples}"
        )

    shares = joined[features.names].isna().mean()
    too_null = shares[shares > quality.max_feature_null_share]
    if not too_null.empty:
        details = "; ".join(
            f"column {name!r}: {int(joined[name].isna().sum())} of {rows_out} rows null "
            f"({share:.1%})"
            for name, share in too_null.items()
        )
        raise FeatureRetrievalError(
            f"Features of {dataset.short} exceed the allowed null share "
            f"{quality.max_feature_null_share:.1%}: {details}"
        )
    # Feast returns rows in its own order; a stable order keeps training deterministic.
    ordered = joined.sort_values(keys, kind="stable").reset_index(drop=True)
    return pd.DataFrame(ordered)
