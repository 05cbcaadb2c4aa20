"""New-data detection: a sensor over the DVC data registry.

resolve the dataset's newest revision -> does a training cover it? -> count its rows
  -> announce `driftloop.dataset.updated` (once, or again if that started no training)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from blocks.dvc import DvcDataset
from driftloop.core import names
from driftloop.core.dataset_events import ANNOUNCE_GRACE_S
from tasks.announce_dataset_update import announce_dataset_update
from tasks.check_revision_coverage import check_revision_coverage
from tasks.load_labeled_entities import load_labeled_entities
from tasks.resolve_dataset import resolve_dataset

if TYPE_CHECKING:
    import pandas as pd


@flow(name="detect-new-data")
def detect_new_data(
    dataset_block: str = names.DEFAULT_BLOCK,
    announce_again_after_s: Annotated[
        float,
        Field(
            ge=0,
            le=86_400,
            description="Announce a revision again if no training covers it this long after "
            "its announcement.",
        ),
    ] = ANNOUNCE_GRACE_S,
) -> str | None:
    """Announce the dataset's newest revision unless a training covers it already.

    Catches revisions pushed by any means (it looks at the registry, not at who pushed). A
    revision is announced once; if that announcement started no training within a grace period
    (an automation action failed, say), it is announced again. Returns the event id, or None
    when there was nothing to announce.

    Args:
        dataset_block: Name of the `driftloop-dvc-dataset` block to watch (its default rev).
        announce_again_after_s: How long an announcement may take to start a training.
    """
    dataset_cfg = DvcDataset.load_named(dataset_block)
    dataset = resolve_dataset(dataset_cfg.location())
    coverage = check_revision_coverage(
        dataset_cfg.name, dataset_block, dataset, announce_again_after_s
    )
    if coverage.covered:
        get_run_logger().info("No new data: %s", coverage.reason)
        return None
    # pandas has no type hints here, so Prefect's overloads would take the task for an async
    # one and its result for a coroutine.
    entities: pd.DataFrame = load_labeled_entities(dataset, dataset_cfg.table_schema())
    return announce_dataset_update(dataset_cfg.name, dataset, len(entities), again=coverage.again)
