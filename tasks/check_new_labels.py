"""Drift step 5: does the dataset hold labeled data the champion has not been fit on?"""

from __future__ import annotations

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import DatasetVersion, LabelStatus, ModelVersionRef
from driftloop.core.planning import new_labels_reason
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="check-new-labels", cache_policy=UNCACHED, **IO_RETRIES)
def check_new_labels(
    champion: ModelVersionRef, newest: DatasetVersion, tracking: MlflowTracking
) -> LabelStatus:
    """Has any version been trained on the dataset's newest revision (resolved now)? If so,
    drift cannot be retrained away: a retraining would find that version and stop."""
    client = tracking.activate()
    found = client.search_model_versions(
        f"name='{champion.name}' and tags.`{names.TAG_DVC_MD5}` = '{newest.md5}'"
    )
    trained = None
    if found:
        latest = max(found, key=lambda v: int(v.version))
        trained = (str(latest.version), latest.tags.get(names.TAG_DECISION))
    new, reason = new_labels_reason(champion.version, newest, trained)
    get_run_logger().info("Labels: %s", reason)
    return LabelStatus(
        commit=newest.commit,
        md5=newest.md5,
        champion_version=champion.version,
        trained_version=trained[0] if trained else None,
        new_labels=new,
        reason=reason,
    )
