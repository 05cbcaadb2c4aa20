"""New-data step 3: announce a dataset revision nobody has announced yet."""

from __future__ import annotations

from prefect import get_run_logger, task

from driftloop import dataset_events
from driftloop.contracts import DatasetVersion
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="announce-dataset-update", cache_policy=UNCACHED, **IO_RETRIES)
def announce_dataset_update(dataset_name: str, dataset: DatasetVersion, rows: int) -> str | None:
    """Emit `driftloop.dataset.updated` for this revision, at most once per content hash
    (shared with the command that pushes batches). Returns the event id, or None if the
    revision had been announced already."""
    logger = get_run_logger()
    event_id = dataset_events.announce_revision(
        dataset_name, dataset.commit, dataset.md5, rows, dataset.location.path, by="detect-new-data"
    )
    if event_id is None:
        logger.info("%s was announced already; nothing to do", dataset.short)
    else:
        logger.info("New revision %s (%d rows): emitted %s", dataset.short, rows, event_id)
    return event_id
