"""Drift step 4: prediction drift, the champion's scores on the window against its reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.drift import DriftPolicy
from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef, PredictionDrift, ResolvedFeatures
from driftloop.core.modeling import feature_matrix, positive_proba
from tasks._policy import NO_RETRIES, UNCACHED
from tasks.load_champion_model import load_champion_model
from tasks.measure_drift import run_drift_preset

if TYPE_CHECKING:
    import pandas as pd


@task(name="measure-prediction-drift", cache_policy=UNCACHED, **NO_RETRIES)
def measure_prediction_drift(
    champion: ModelVersionRef,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: ResolvedFeatures,
    policy: DriftPolicy,
    tracking: MlflowTracking,
) -> PredictionDrift:
    """Score the reference (the newest span of what the champion was fit on, its holdout
    included) and the current window with the champion, and test the two score
    distributions as the features are tested (the policy's numeric method and threshold).

    Feature drift that does not move the scores matters less than drift that does; a score
    shift with no feature drift points at an interaction the per-column tests miss.
    """
    import pandas as pd

    model = load_champion_model.fn(champion, tracking, features)
    scored = {
        side: pd.DataFrame(
            {
                names.SCORE_COLUMN: positive_proba(
                    model.predict(feature_matrix(frame, features.columns))
                )
            }
        )
        for side, frame in (("reference", reference), ("current", current))
    }
    # Only the policy's method and threshold for numerics: per-column settings name features.
    kwargs = {k: v for k, v in policy.preset_kwargs().items() if k in ("num_method", "threshold")}
    _, (column,), _ = run_drift_preset(
        scored["reference"], scored["current"], [names.SCORE_COLUMN], [], kwargs
    )
    drift = PredictionDrift(
        method=column.method,
        score=column.score,
        threshold=column.threshold,
        drifted=column.drifted,
        reference_mean=float(scored["reference"][names.SCORE_COLUMN].mean()),
        current_mean=float(scored["current"][names.SCORE_COLUMN].mean()),
    )
    get_run_logger().info(
        "Prediction drift: %s %.4g (threshold %g), mean score %.3f -> %.3f",
        drift.method, drift.score, drift.threshold, drift.reference_mean, drift.current_mean,
    )  # fmt: skip
    return drift
