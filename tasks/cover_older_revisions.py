"""Step 3: the revisions the trained one supersedes are recorded as covered by this run."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run as runtime_flow_run

from driftloop.core import dataset_events
from driftloop.core.contracts import DatasetVersion
from driftloop.core.errors import DatasetNotFoundError
from driftloop.core.planning import superseded_message
from tasks._policy import IO_RETRIES, UNCACHED
from tasks.resolve_dataset import earlier_commits, resolve

# How far back in the data registry's history a training looks for revisions left behind.
HISTORY_LIMIT = 20


@task(name="cover-older-revisions", cache_policy=UNCACHED, **IO_RETRIES)
def cover_older_revisions(
    dataset_name: str, dataset_block: str, dataset: DatasetVersion
) -> list[str]:
    """Latest wins, visibly: walk the data registry back from the revision this run trains
    and record every earlier revision that no training accounts for as superseded by it.

    Such a revision was pushed while another was newer by the time anything looked, or its
    announcement (or the automation action it should have fired) failed. A revision with a
    training run of its own is left to that run, which says itself what superseded it. The
    walk stops at the first revision a training accounted for. Returns the short commits
    recorded.
    """
    run_id = runtime_flow_run.get_id()
    if not run_id:
        return []
    covered: list[str] = []
    seen = {dataset.md5}
    for commit in earlier_commits(dataset.location, dataset.commit, HISTORY_LIMIT):
        try:
            version = resolve(dataset.location.model_copy(update={"rev": commit}))
        except DatasetNotFoundError:
            break  # the file did not exist yet
        if version.md5 in seen:
            continue  # a commit that changed something else
        seen.add(version.md5)
        entry = dataset_events.read_ledger(dataset_name, version.md5)
        if entry and entry.get("training_run"):
            break
        if dataset_events.queued_trainings(commit, dataset_block):
            continue
        dataset_events.record_training(
            dataset_name, version.md5, commit, str(run_id),
            superseded_by=dataset.commit,
            message=superseded_message(commit, dataset.commit),
        )  # fmt: skip
        covered.append(commit[:8])
    if covered:
        get_run_logger().info(
            "Latest wins: %s covers the earlier revision(s) %s, which have no training of their "
            "own (recorded in their ledger entries)", dataset.short, ", ".join(covered),
        )  # fmt: skip
    return covered
