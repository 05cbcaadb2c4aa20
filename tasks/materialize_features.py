"""Copy the newest feature values from the Feast offline store to the online store."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task

from blocks.feast import FeastFeatureStore
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="materialize-features", cache_policy=UNCACHED, **IO_RETRIES)
def materialize_features(feast: FeastFeatureStore, end: datetime | None = None) -> str:
    """Feast `materialize_incremental` up to `end` (default: now): each feature view picks up
    where its last materialization ended. Returns the end it materialized to."""
    end = end or datetime.now(UTC)
    store = feast.store()
    store.materialize_incremental(end_date=end)
    get_run_logger().info("Materialized %s up to %s", store.project, end.isoformat())
    return end.isoformat()
