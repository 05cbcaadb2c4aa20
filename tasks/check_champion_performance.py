"""Training step 4b: before retraining, score the champion on the labeled rows it has not seen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.events import emit_event

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import (
    DatasetVersion,
    ModelVersionRef,
    PerformanceCheck,
    ResolvedFeatures,
    TableSchema,
)
from driftloop.core.params import PromotionPolicy
from driftloop.core.performance import degradation_reason
from driftloop.core.timewindows import can_judge, rows_after
from tasks._policy import IO_RETRIES, by_content
from tasks.evaluate_champion import evaluate_champion

if TYPE_CHECKING:
    import pandas as pd


@task(
    name="check-champion-performance",
    # Once per champion and data: a resumed run does not add a second point to the series.
    cache_policy=by_content("champion", "dataset.md5", "policy"),
    persist_result=True,
    **IO_RETRIES,
)
def check_champion_performance(
    champion: ModelVersionRef | None,
    frame: pd.DataFrame,
    dataset: DatasetVersion,
    features: ResolvedFeatures,
    schema: TableSchema,
    policy: PromotionPolicy,
    tracking: MlflowTracking,
) -> PerformanceCheck | None:
    """Score the champion on the rows newer than its data (concept drift shows here, where
    feature drift may not), add the score to the model's monitoring run in MLflow (one point
    per batch, a chart in the MLflow UI), and emit `driftloop.performance.degraded` or
    `driftloop.performance.checked`. None if there is no champion or too few new rows."""
    logger = get_run_logger()
    if champion is None or not champion.fitted_until:
        logger.info("Performance: no champion fit-date to compare new labels with")
        return None
    new_rows = rows_after(frame, schema.timestamp_column, champion.fitted_until)
    if not can_judge(new_rows, schema.label_column):
        logger.info(
            "Performance: %d new labeled rows, too few to judge the champion", len(new_rows)
        )
        return None
    evaluation = evaluate_champion.fn(champion, new_rows, features, schema, tracking)
    if evaluation.metrics is None:
        logger.warning("Performance: %s", evaluation.not_comparable_reason)
        return None
    client = tracking.activate()
    metric = policy.metric
    score = evaluation.metrics.score(metric)
    baseline = client.get_run(champion.run_id).data.metrics.get(metric) if champion.run_id else None
    degraded = degradation_reason(metric, score, baseline, policy.floor, policy.max_degradation)

    run_id = tracking.monitoring_run(names.MONITOR_PERFORMANCE, champion.name)
    step = len(client.get_metric_history(run_id, f"live_{metric}"))
    client.log_metric(run_id, f"live_{metric}", score, step=step)
    client.log_metric(run_id, "live_rows", len(new_rows), step=step)
    client.log_metric(run_id, "champion_version", int(champion.version), step=step)
    check = PerformanceCheck(
        model_name=champion.name, champion_version=champion.version, metric=metric,
        score=score, baseline=baseline, rows=len(new_rows), degraded=degraded,
        monitoring_run_id=run_id,
    )  # fmt: skip
    event = emit_event(
        event=names.EVENT_PERFORMANCE_DEGRADED if degraded else names.EVENT_PERFORMANCE_CHECKED,
        resource={
            "prefect.resource.id": names.model_resource_id(champion.name),
            "prefect.resource.name": champion.name,
        },
        payload={
            **check.model_dump(mode="json"),
            names.PAYLOAD_REV: dataset.commit,
            # The monitoring run: its chart of the champion's score, one point per batch.
            names.PAYLOAD_MLFLOW_URL: tracking.run_url(tracking.experiment_id(), run_id),
        },
    )
    if event is None:
        raise RuntimeError("Could not emit the performance event")
    if degraded:
        logger.warning("Champion v%s degraded: %s", champion.version, degraded)
    else:
        logger.info(
            "Champion v%s on %d new labeled rows: %s %.4f (holdout %s)",
            champion.version, len(new_rows), metric, score, baseline,
        )  # fmt: skip
    return check
