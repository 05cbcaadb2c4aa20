"""Feature materialization: the Feast online store catches up with the offline store.

materialize incremental (every feature view, up to now)
"""

from __future__ import annotations

from prefect import flow

from blocks.feast import FeastFeatureStore
from driftloop import names
from driftloop.ray_runner import DriftloopRayTaskRunner
from tasks.materialize_features import materialize_features


@flow(name="materialize-features", task_runner=DriftloopRayTaskRunner())
def materialize(feast_block: str = names.DEFAULT_BLOCK) -> str:
    """Run Feast `materialize_incremental` into the online store, up to now.

    Args:
        feast_block: Name of the `driftloop-feast` block.
    """
    return materialize_features(FeastFeatureStore.load_named(feast_block))
