"""Drift step 6: add the check to the champion version's drift series in MLflow."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import DriftResult, DriftTrendPoint
from tasks._policy import NO_RETRIES, UNCACHED

# How many checks the Prefect artifact shows: a day of hourly checks.
TREND_POINTS = 24


@task(name="record-drift-history", cache_policy=UNCACHED, **NO_RETRIES)
def record_drift_history(result: DriftResult, tracking: MlflowTracking) -> list[DriftTrendPoint]:
    """One point per check, on one MLflow run per champion version (`drift-<model>-v<n>`):
    `drift_share`, `drift_score.<column>` for the columns that drifted, and
    `prediction_drift_score`. Steps count the checks, so the run's *Model metrics* tab charts
    the trend. Returns the last `TREND_POINTS` points of `drift_share`, oldest first.

    Not retried by Prefect (MLflow's client retries its calls): a retry after a partial write
    would add the point twice.
    """
    client = tracking.activate()
    run_id = tracking.monitoring_run(
        names.MONITOR_DRIFT, result.model_name, result.champion_version
    )
    earlier = sorted(client.get_metric_history(run_id, "drift_share"), key=lambda m: m.step)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    metrics = {"drift_share": result.drift_share}
    metrics.update({f"drift_score.{c.column}": c.score for c in result.columns if c.drifted})
    if result.prediction is not None:
        metrics["prediction_drift_score"] = result.prediction.score
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, timestamp=now_ms, step=len(earlier))
    series = [(m.timestamp, m.value) for m in earlier] + [(now_ms, result.drift_share)]
    return [
        DriftTrendPoint(
            at=datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds"),
            drift_share=share,
        )
        for ms, share in series[-TREND_POINTS:]
    ]
