"""New-data detection: a sensor over the DVC data registry.

resolve the dataset's revision -> already announced? -> count its rows
  -> announce `driftloop.dataset.updated` (once per content hash)
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.dvc import DvcDataset
from driftloop import dataset_events, names
from driftloop.ray_runner import DriftloopRayTaskRunner
from tasks.announce_dataset_update import announce_dataset_update
from tasks.load_labeled_entities import load_labeled_entities
from tasks.resolve_dataset import resolve_dataset


@flow(name="detect-new-data", task_runner=DriftloopRayTaskRunner())
def detect_new_data(dataset_block: str = names.DEFAULT_BLOCK) -> str | None:
    """Announce the dataset's current revision if its content hash is new.

    Catches revisions pushed by any means (it looks at the registry, not at who pushed).
    Remembers what it announced in Prefect Variables, so a revision gives one event even
    across restarts, and none if the batch command announced it first.

    Args:
        dataset_block: Name of the `driftloop-dvc-dataset` block to watch (its default rev).
    """
    dataset_cfg = DvcDataset.load_named(dataset_block)
    dataset = resolve_dataset(dataset_cfg.location())
    if dataset_events.is_announced(dataset_cfg.name, dataset.md5):
        get_run_logger().info("No new data: %s was announced already", dataset.short)
        return None
    entities = load_labeled_entities(dataset, dataset_cfg.table_schema())
    return announce_dataset_update(dataset_cfg.name, dataset, len(entities))
