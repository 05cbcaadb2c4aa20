"""Drift step 4: the Evidently report and the scores, as an MLflow run next to the model's."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import DriftResult
from driftloop.core.lineage import current_flow_run
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="log-drift-report", cache_policy=UNCACHED, **IO_RETRIES)
def log_drift_report(result: DriftResult, report: Path, tracking: MlflowTracking) -> dict[str, str]:
    """Log the drift check as an MLflow run in the model's experiment: the HTML report as an
    artifact, the drift share and per-column scores as metrics. Returns the run's id and the
    report's URL."""
    import mlflow

    tracking.activate()
    experiment_id = tracking.experiment_id()
    flow_run_id, flow_run_url = current_flow_run()
    tags = {
        names.TAG_MODEL_NAME: result.model_name,
        names.TAG_DRIFT_CHAMPION_VERSION: result.champion_version,
        names.TAG_DRIFT_DETECTED: str(result.detected).lower(),
    }
    if flow_run_id:
        tags[names.TAG_FLOW_RUN_ID] = flow_run_id
    if flow_run_url:
        tags[names.TAG_FLOW_RUN_URL] = flow_run_url
    run_name = f"{names.DRIFT_RUN_PREFIX}-v{result.champion_version}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params(
            {"window_start": result.window_start, "window_end": result.window_end,
             "drift_share_threshold": result.drift_share_threshold,
             "reference_rows": result.reference_rows, "current_rows": result.current_rows}
        )  # fmt: skip
        metrics = {"drift_share": result.drift_share,
                   **{f"drift_score.{c.column}": c.score for c in result.columns}}  # fmt: skip
        if result.prediction is not None:
            metrics["prediction_drift_score"] = result.prediction.score
            metrics["prediction_mean.reference"] = result.prediction.reference_mean
            metrics["prediction_mean.current"] = result.prediction.current_mean
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(report), str(Path(names.DRIFT_REPORT_ARTIFACT).parent))
    run_url = tracking.run_url(experiment_id, run.info.run_id)
    report_url = f"{run_url}/artifacts/{names.DRIFT_REPORT_ARTIFACT}" if run_url else ""
    return {"run_id": run.info.run_id, "run_url": run_url or "", "report_url": report_url}
