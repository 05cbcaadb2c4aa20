"""Copy the newest feature values from the Feast offline store to the online store."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task

from blocks.feast import FeastFeatureStore
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="materialize-features", cache_policy=UNCACHED, **IO_RETRIES)
def materialize_features(feast: FeastFeatureStore, since: datetime | None = None) -> str:
    """Feast `materialize_incremental` up to now: each feature view picks up where its last
    materialization ended.

    Rows that arrive late, with event timestamps before that point (a batch pushed today with
    last week's observations), are never picked up incrementally; with `since`, the window from
    `since` to now is materialized again as well. Returns the end it materialized to.
    """
    logger = get_run_logger()
    end = datetime.now(UTC)
    store = feast.store()
    store.materialize_incremental(end_date=end)
    if since is not None:
        store.materialize(start_date=since, end_date=end)
        logger.info("Re-materialized %s from %s for late rows", store.project, since.isoformat())
    logger.info("Materialized %s up to %s", store.project, end.isoformat())
    return end.isoformat()
