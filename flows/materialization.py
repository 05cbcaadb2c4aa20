"""Feature materialization: the Feast online store catches up with the offline store.

materialize incremental (every feature view, up to now) + the late-data window again
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow
from pydantic import Field

from blocks.feast import FeastFeatureStore
from driftloop.core import names
from tasks.materialize_features import materialize_features


@flow(name="materialize-features")
def materialize(
    late_data_days: Annotated[
        float,
        Field(
            ge=0,
            le=366,
            description="Also re-materialize this many days back, for rows that arrived late "
            "(0: incremental only).",
        ),
    ] = 8.0,
    feast_block: str = names.DEFAULT_BLOCK,
) -> str:
    """Run Feast `materialize_incremental` into the online store, up to now, and materialize
    the last `late_data_days` again so that late-arriving rows reach the online store too.

    Args:
        late_data_days: How far back rows may arrive late (the demo's batches span 7 days).
        feast_block: Name of the `driftloop-feast` block.
    """
    since = datetime.now(UTC) - timedelta(days=late_data_days) if late_data_days else None
    return materialize_features(FeastFeatureStore.load_named(feast_block), since)
