"""Drift monitoring: the champion's training reference against the latest production features.

find champion -> load its reference (the newest span of what it was fit on)
  -> resolve its features -> get the feature window (Feast offline store, or what the serving
     application served: its prediction log)
  -> measure drift (Evidently) -> measure prediction drift (the champion's scores)
  -> log the report to MLflow -> add the check to the version's drift series
  -> publish the drift table and trend
  -> check for labeled data the champion has not seen (DVC)
  -> announce detected (retrainable or not) / checked
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow

from blocks.drift import DriftPolicy
from blocks.dvc import DvcDataset
from blocks.feast import FeastFeatureStore
from blocks.mlflow import MlflowTracking
from blocks.serving import ServingConfig
from driftloop.core import names
from driftloop.core.contracts import DriftResult
from driftloop.core.params import DriftWindow
from driftloop.core.settings import get_settings
from driftloop.core.timewindows import newest_span
from tasks.announce_drift import announce_drift
from tasks.check_new_labels import check_new_labels
from tasks.get_champion import get_required_champion
from tasks.get_feature_window import get_feature_window
from tasks.get_served_window import get_served_window
from tasks.load_champion_reference import (
    champion_features,
    load_champion_reference,
)
from tasks.log_drift_report import log_drift_report
from tasks.measure_drift import measure_drift
from tasks.measure_prediction_drift import measure_prediction_drift
from tasks.publish_drift_summary import publish_drift_summary
from tasks.record_drift_history import record_drift_history
from tasks.resolve_dataset import resolve_dataset
from tasks.resolve_features import resolve_features


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(
    window: DriftWindow = DriftWindow(),
    drift_block: str = names.DEFAULT_BLOCK,
    feast_block: str = names.DEFAULT_BLOCK,
    mlflow_block: str = names.DEFAULT_BLOCK,
    dataset_block: str = names.DEFAULT_BLOCK,
    serving_block: str = names.DEFAULT_BLOCK,
) -> DriftResult:
    """Check the champion's features for drift over a window of production data and emit
    `driftloop.drift.detected` or `driftloop.drift.checked`.

    The reference is the newest `window.days` of the data the champion was fit on, so right
    after a training the two compare the same span. A detected drift's event says whether the
    dataset holds labeled data the champion has not seen (the retraining automation fires only
    then); if it does not, `driftloop.retraining.skipped` tells a person that new labels are
    needed.

    Args:
        window: The window of production features (default: the newest 7 days of data).
        drift_block: Name of the `driftloop-drift-policy` block (tests, thresholds, share).
        feast_block: Name of the `driftloop-feast` block.
        mlflow_block: Name of the `driftloop-mlflow` block (model, and where reports go).
        dataset_block: Name of the `driftloop-dvc-dataset` block with the labeled data.
        serving_block: Name of the `driftloop-serving` block, whose prediction log is the
            window when `window.source` is `served`.
    """
    policy = DriftPolicy.load_named(drift_block)
    feast_cfg = FeastFeatureStore.load_named(feast_block)
    mlflow_cfg = MlflowTracking.load_named(mlflow_block)
    dataset_cfg = DvcDataset.load_named(dataset_block)

    champion = get_required_champion(mlflow_cfg)
    reference = newest_span(
        load_champion_reference(champion, mlflow_cfg),
        dataset_cfg.table_schema().timestamp_column, window.days, policy.min_rows,
    )  # fmt: skip
    features = resolve_features(feast_cfg, champion_features(champion, mlflow_cfg))
    if window.source == "served":
        log = ServingConfig.load_named(serving_block).prediction_log(get_settings().served_dir)
        current, start, end = get_served_window(
            log, champion.name, features, window, policy.min_rows
        )
    else:
        current, start, end = get_feature_window(feast_cfg, features, window, policy.min_rows)
    with tempfile.TemporaryDirectory(prefix="driftloop-drift-") as tmp:
        result, report = measure_drift(
            reference, current, features, policy, champion,
            (start.isoformat(), end.isoformat()), Path(tmp),
        )  # fmt: skip
        prediction = measure_prediction_drift(
            champion, reference, current, features, policy, mlflow_cfg
        )
        result = result.model_copy(update={"prediction": prediction})
        logged = log_drift_report(result, report, mlflow_cfg)
    history = record_drift_history(result, mlflow_cfg)
    publish_drift_summary(result, logged, history)
    labels = check_new_labels(champion, resolve_dataset(dataset_cfg.location()), mlflow_cfg)
    announce_drift(result, labels, logged.get("run_url") or None)
    return result
