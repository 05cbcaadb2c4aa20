"""Log every model-search trial as a child run of the training run in MLflow."""

from __future__ import annotations

from prefect import task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import LoggedRun, TrialOutcome
from tasks._policy import IO_RETRIES, by_content


@task(
    name="log-trials-to-mlflow",
    cache_policy=by_content("run", "outcomes"),
    persist_result=True,
    **IO_RETRIES,
)
def log_trials_to_mlflow(
    run: LoggedRun, outcomes: list[TrialOutcome], tracking: MlflowTracking
) -> int:
    """One child run per trial (params, validation metrics, node, state). Idempotent: a retry
    skips trials already logged under this parent."""
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = tracking.activate()
    existing = client.search_runs(
        [run.experiment_id], filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{run.run_id}'"
    )
    logged = {r.data.tags.get(names.TAG_TRIAL_NUMBER) for r in existing}
    created = 0
    for outcome in outcomes:
        if str(outcome.number) in logged:
            continue
        tags = {
            MLFLOW_PARENT_RUN_ID: run.run_id,
            MLFLOW_RUN_NAME: f"trial-{outcome.number:02d} {outcome.label}",
            names.TAG_TRIAL_NUMBER: str(outcome.number),
            names.TAG_TRIAL_STATE: outcome.state,
            names.TAG_TRIAL_TASK_RUN: outcome.task_run_id,
        }
        metrics: list[Metric] = []
        if outcome.result:
            tags[names.TAG_TRIAL_NODE] = outcome.result.node_id
            tags[names.TAG_TRIAL_ATTEMPT] = str(outcome.result.attempt)
            values = outcome.result.metrics.as_dict()
            metrics = [Metric(f"val_{k}", v, 0, 0) for k, v in values.items()]
            metrics.append(Metric("seconds", outcome.result.seconds, 0, 0))
        child = client.create_run(run.experiment_id, tags=tags)
        params = [Param(f"model.{k}", str(v)) for k, v in outcome.spec.items()]
        client.log_batch(child.info.run_id, metrics=metrics, params=params)
        status = RunStatus.FINISHED if outcome.result else RunStatus.FAILED
        client.set_terminated(child.info.run_id, RunStatus.to_string(status))
        created += 1
    return created
