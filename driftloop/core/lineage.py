"""Lineage of a trained model: the exact data, features and Prefect run it came from."""

from __future__ import annotations

from driftloop.core import names
from driftloop.core.contracts import DatasetVersion, ResolvedFeatures
from driftloop.core.params import TriggerContext

_MAX_TAG = 5000  # MLflow's limit on a tag value is 8000 characters; stay well below.


def current_flow_run() -> tuple[str | None, str | None]:
    """The id and UI URL of the Prefect flow run we are in, if any."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    run_id = flow_run.get_id()
    # url_for builds the UI's route (runs/flow-run/<id>); runtime.get_flow_run_ui_url does not.
    return run_id, (url_for("flow-run", obj_id=run_id) if run_id else None)


def lineage_tags(
    dataset: DatasetVersion, features: ResolvedFeatures, trigger: TriggerContext
) -> dict[str, str]:
    """MLflow tags that tie a run and its model version to data, features and flow run."""
    run_id, run_url = current_flow_run()
    location = dataset.location
    tags = {
        names.TAG_DVC_REPO: location.repo,
        names.TAG_DVC_PATH: location.path,
        names.TAG_DVC_REV: location.rev,
        names.TAG_DVC_COMMIT: dataset.commit,
        names.TAG_DVC_MD5: dataset.md5,
        names.TAG_FEAST_PROJECT: features.project,
        names.TAG_FEAST_FEATURES: ",".join(features.refs)[:_MAX_TAG],
        names.TAG_TRIGGER_REASON: trigger.reason,
    }
    if features.feature_service:
        tags[names.TAG_FEAST_FEATURE_SERVICE] = features.feature_service
    if trigger.drifted_columns:
        tags[names.TAG_TRIGGER_DRIFTED_COLUMNS] = ",".join(trigger.drifted_columns)[:_MAX_TAG]
    if trigger.performance_drop:
        tags[names.TAG_TRIGGER_PERFORMANCE_DROP] = trigger.performance_drop[:_MAX_TAG]
    if run_id:
        tags[names.TAG_FLOW_RUN_ID] = run_id
    if run_url:
        tags[names.TAG_FLOW_RUN_URL] = run_url
    return tags
