"""New-data step 2: does a training cover the dataset's newest revision yet?"""

from __future__ import annotations

from prefect import task

from driftloop.core import dataset_events
from driftloop.core.contracts import DatasetVersion, RevisionCoverage
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="check-revision-coverage", cache_policy=UNCACHED, **IO_RETRIES)
def check_revision_coverage(
    dataset_name: str, dataset_block: str, dataset: DatasetVersion, grace_s: float
) -> RevisionCoverage:
    """A revision is covered once a training run recorded it in the revision's ledger, or a
    training run for exactly its commit exists (queued ones count), unless that run failed
    (a failed training, say Ray did not start, leaves its data to be trained again). An
    announcement younger than `grace_s` covers it too: its training is probably being
    created."""
    entry = dataset_events.read_ledger(dataset_name, dataset.md5)
    recorded = entry.get("training_run") if entry else None
    if recorded:
        run = dataset_events.read_run(recorded)
        if run is not None and dataset_events.run_covers_its_data(run):
            return RevisionCoverage(
                covered=True, reason=f"{dataset.short} is covered by training run {run.name!r}"
            )
    queued = dataset_events.queued_trainings(dataset.commit, dataset_block)
    if queued:
        run = queued[0]
        state = run.state.name if run.state else "?"
        return RevisionCoverage(
            covered=True, reason=f"{dataset.short} has training run {run.name!r} ({state})"
        )
    if entry is None:
        return RevisionCoverage(covered=False, reason=f"{dataset.short} is new")
    age = dataset_events.announcement_age_s(entry)
    if age is not None and age < grace_s:
        return RevisionCoverage(
            covered=True,
            reason=f"{dataset.short} was announced {age:.0f}s ago by {entry.get('seen_by')}; "
            "its training is on the way",
        )
    return RevisionCoverage(
        covered=False,
        again=True,
        reason=f"{dataset.short} was announced {age or 0:.0f}s ago by {entry.get('seen_by')} "
        "but no training run covers it (did an automation action fail?): announcing it again",
    )
