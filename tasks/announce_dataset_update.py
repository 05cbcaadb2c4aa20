"""New-data step 4: announce a dataset revision that no training covers yet."""

from __future__ import annotations

from prefect import get_run_logger, task

from driftloop.core import dataset_events
from driftloop.core.contracts import DatasetVersion
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="announce-dataset-update", cache_policy=UNCACHED, **IO_RETRIES)
def announce_dataset_update(
    dataset_name: str, dataset: DatasetVersion, rows: int, again: bool = False
) -> str | None:
    """Emit `driftloop.dataset.updated` for this revision: once per content hash (shared with
    the command that pushes batches), or `again` when the first announcement started no
    training. Returns the event id, or None if someone else announced it meanwhile."""
    logger = get_run_logger()
    event_id = dataset_events.announce_revision(
        dataset_name, dataset.commit, dataset.md5, rows, dataset.location.path,
        by="detect-new-data", again=again,
    )  # fmt: skip
    if event_id is None:
        logger.info("%s was announced already; nothing to do", dataset.short)
    else:
        logger.info(
            "%s revision %s (%d rows): emitted %s",
            "Announced again" if again else "New", dataset.short, rows, event_id,
        )  # fmt: skip
    return event_id
