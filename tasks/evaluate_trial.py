"""One model-search trial: fit a candidate on older training rows, score it on newer ones."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.states import Completed, State

from driftloop.core.contracts import Metrics, ResolvedFeatures, TableSchema, TrialResult
from driftloop.core.modeling import build_pipeline, feature_matrix, score_probabilities
from driftloop.core.params import Metric, ModelSpec
from driftloop.core.timewindows import split_by_time
from tasks._policy import NO_RETRIES, by_content

if TYPE_CHECKING:
    import pandas as pd


def _attempt() -> int:
    """Which attempt this is: Ray re-runs a task whose worker or node died.

    Ray knows (its core worker counts attempts) but has no public API for it yet, so this
    reads the private one and falls back to 1. Prefect's state history is no substitute: task
    run states reach the server as events, after the task body has started.
    """
    try:
        import ray

        worker = ray._private.worker.global_worker
        return int(worker.core_worker.get_current_task_attempt_number()) + 1  # type: ignore[attr-defined]
    except Exception:
        return 1


def fit_and_score(
    train: pd.DataFrame,
    features: ResolvedFeatures,
    schema: TableSchema,
    spec: ModelSpec,
    validation_fraction: float,
    random_state: int,
) -> Metrics:
    """The computation of a trial, without any orchestration."""
    fit_rows, validation = split_by_time(
        train, schema.timestamp_column, validation_fraction, schema.entity_columns
    )
    columns = list(features.columns)
    model = build_pipeline(spec, columns, random_state)
    model.fit(feature_matrix(fit_rows, columns), fit_rows[schema.label_column])
    proba = model.predict_proba(feature_matrix(validation, columns))[:, 1]
    return score_probabilities(validation[schema.label_column].to_numpy(), proba)


@task(
    name="evaluate-trial",
    cache_policy=by_content(
        "train", "features", "schema", "spec", "validation_fraction", "metric", "random_state"
    ),
    persist_result=True,
    # A pure computation: an exception would recur. A dead worker or node is retried by Ray
    # (max_retries, see the driftloop-ray block), on whichever node is alive.
    **NO_RETRIES,
)
def evaluate_trial(
    number: int,
    label: str,
    train: pd.DataFrame,
    features: ResolvedFeatures,
    schema: TableSchema,
    spec: ModelSpec,
    validation_fraction: float,
    metric: Metric,
    random_state: int,
) -> State:
    """Fit the spec on the older training rows and score it on the newest ones.

    Records the Ray node it ran on and which attempt it was; the task run's state message
    shows the score.
    """
    import ray

    logger = get_run_logger()
    attempt = _attempt()
    if attempt > 1:
        logger.warning("Trial %d restarted (attempt %d): its previous worker died", number,
                       attempt)  # fmt: skip
    started = time.perf_counter()
    metrics = fit_and_score(train, features, schema, spec, validation_fraction, random_state)
    context = ray.get_runtime_context() if ray.is_initialized() else None
    node_id = context.get_node_id() if context else "local"
    node_ip = ray.util.get_node_ip_address() if context else "127.0.0.1"
    result = TrialResult(
        number=number,
        label=label,
        spec=spec.model_dump(),
        score=metrics.score(metric),
        metrics=metrics,
        node_id=node_id,
        node_ip=node_ip,
        attempt=attempt,
        seconds=time.perf_counter() - started,
    )
    message = f"{metric} {result.score:.4f} on node {node_id[:8]}"
    if attempt > 1:
        message += f" (attempt {attempt}: an earlier worker died)"
    logger.info("Trial %d (%s): %s in %.1fs", number, label, message, result.seconds)
    return Completed(message=message, data=result)
