"""Drift monitoring, new-data detection, materialization and batch scoring, on a private demo
(real Prefect server, DVC registry, Feast repo, MLflow on SQLite). The tests of this module
build on each other in file order: a champion is trained once, then a drifted batch arrives."""

from __future__ import annotations

import pandas as pd
import pytest

from driftloop.app.demo.churn import STRONG_DRIFT
from driftloop.core import names
from driftloop.core.contracts import DriftResult, ScoringResult
from driftloop.core.errors import ModelSignatureError, NoChampionError, NotEnoughDataError
from driftloop.core.params import DriftWindow, FeatureSelection, ScoringBatch
from flows.batch_scoring import score_batch
from flows.drift_monitoring import monitor_drift
from flows.new_data import detect_new_data
from flows.training import train
from tests.conftest import make_demo
from tests.helpers import events, make_mlflow, unique


@pytest.fixture(scope="module")
def world(prefect_server, ray_session, tmp_path_factory):
    """A private demo with its own MLflow store and a trained champion."""
    from blocks import DriftPolicy, DvcDataset

    root = tmp_path_factory.mktemp("monitoring")
    demo = make_demo(root)
    mlflow = make_mlflow(root / "mlflow")
    state = train(**demo.train_kwargs(mlflow), return_state=True)
    assert state.is_completed(), state.message
    drift_block = unique("drift")
    DriftPolicy().save(drift_block)
    demo.dataset_name = DvcDataset.load(demo.dataset_block).name
    demo.drift_block = drift_block
    return demo, mlflow


def monitor(demo, mlflow, **kwargs):
    return monitor_drift(
        drift_block=demo.drift_block, feast_block=demo.feast_block,
        mlflow_block=mlflow.block_name, dataset_block=demo.dataset_block, return_state=True,
        **kwargs,
    )  # fmt: skip


def artifacts_of(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_no_drift_on_data_like_the_training_data(world):
    demo, mlflow = world
    state = monitor(demo, mlflow)
    assert state.is_completed(), state.message
    result: DriftResult = state.result()
    assert not result.detected, result.drifted_columns
    assert result.champion_version == "1"
    assert result.current_rows >= 200
    assert {c.column for c in result.columns} >= {"monthly_charges", "plan", "tenure_months"}

    resource = names.model_resource_id(mlflow.model_name)
    (event,) = events(names.EVENT_DRIFT_CHECKED, resource)
    assert set(event.payload) == {
        "drift_share", "drifted_columns", "champion_version", "window_start", "window_end",
        "rev", "md5", "new_labels", "reason", "mlflow_url", "prediction_drift",
    }  # fmt: skip
    # The champion's own scores on the window against its reference, reported beside.
    prediction = event.payload["prediction_drift"]
    assert prediction["score"] == pytest.approx(result.prediction.score)
    assert 0 < prediction["reference_mean"] < 1
    assert 0 < prediction["current_mean"] < 1
    assert event.payload["champion_version"] == "1"
    # The champion was trained on the newest revision: nothing new to learn from.
    assert event.payload["rev"] == demo.registry.head()
    assert event.payload["new_labels"] is False
    assert event.payload["reason"] == (
        f"no labeled data newer than champion v1 (commit {demo.registry.head()[:8]})"
    )
    flow_run_id = state.state_details.flow_run_id
    assert f"prefect.flow-run.{flow_run_id}" in {r.id for r in event.related}

    (artifact,) = artifacts_of(flow_run_id)
    assert artifact.key == names.ARTIFACT_DRIFT
    assert "| monthly_charges |" in artifact.data
    assert "Prediction drift: " in artifact.data
    assert "### Trend: drift share at the last 1 check(s) of v1" in artifact.data
    runs = mlflow.client().search_runs(
        [mlflow.block.experiment_id()], f"tags.`{names.TAG_DRIFT_CHAMPION_VERSION}` = '1'"
    )
    (run,) = [r for r in runs if not r.data.tags.get(names.TAG_MONITOR)]
    assert run.data.metrics["drift_share"] == pytest.approx(result.drift_share)
    assert event.payload["mlflow_url"] == mlflow.block.run_url(
        run.info.experiment_id, run.info.run_id
    )
    assert "prediction_drift_score" in run.data.metrics
    report = mlflow.client().download_artifacts(run.info.run_id, names.DRIFT_REPORT_ARTIFACT)
    with open(report) as html:
        assert "<html" in html.read(2000).lower()


def test_trained_data_needs_no_announcement(world):
    """The champion's training covered the newest revision (it wrote the revision's ledger):
    the new-data check has nothing to announce."""
    demo, _ = world
    assert detect_new_data(dataset_block=demo.dataset_block) is None
    assert events(names.EVENT_DATASET_UPDATED, names.dataset_resource_id(demo.dataset_name),
                  timeout=2) == []  # fmt: skip


def test_new_data_is_announced_once_and_again_only_if_no_training_follows(world):
    from driftloop.app.demo.setup import add_batch
    from driftloop.core import dataset_events
    from tests.helpers import quietly

    demo, mlflow = world
    with quietly():
        # Pushed but never announced (as if its announcement failed), then a newer revision.
        skipped = add_batch(demo.settings, rows=300, seed=10)
        revision = add_batch(demo.settings, rows=500, seed=11)
    resource = names.dataset_resource_id(demo.dataset_name)
    first = detect_new_data(dataset_block=demo.dataset_block)
    assert first is not None
    # Checked again at once (a restart, the next schedule): its training is on the way.
    assert detect_new_data(dataset_block=demo.dataset_block) is None
    (event,) = events(names.EVENT_DATASET_UPDATED, resource)
    assert str(event.id) == first
    assert event.payload["rev"] == revision.commit == demo.registry.head()
    assert event.payload["md5"] == revision.md5
    assert event.payload["path"] == "data/churn_labels.parquet"
    assert event.payload["rows"] == 3 * 1500 + 300 + 500

    # No training followed (this test server has no automations, as if the action had
    # failed): after the grace period the revision is announced again.
    second = detect_new_data(dataset_block=demo.dataset_block, announce_again_after_s=0)
    assert second is not None
    assert second != first
    # Once a training run covers the revision (it records itself), it is not announced again.
    # (A gate nothing passes keeps the champion the later tests expect.)
    state = train(**demo.train_kwargs(mlflow, gate={"min_improvement": 1.0}), return_state=True)
    assert state.result().dataset_commit == revision.commit
    entry = dataset_events.read_ledger(demo.dataset_name, revision.md5)
    assert entry["training_run"] == str(state.state_details.flow_run_id)
    # The revision nobody announced is recorded as superseded by the one trained (latest wins).
    older = dataset_events.read_ledger(demo.dataset_name, skipped.md5)
    assert older["training_run"] == str(state.state_details.flow_run_id)
    assert older["superseded_by"] == revision.commit
    assert older["message"] == (
        f"revision {skipped.commit[:8]} was superseded by the newer revision "
        f"{revision.commit[:8]} (latest wins)"
    )
    assert detect_new_data(dataset_block=demo.dataset_block, announce_again_after_s=0) is None
    found = events(names.EVENT_DATASET_UPDATED, resource, at_least=2)
    assert [e.payload["md5"] for e in found] == [revision.md5, revision.md5]


def test_scoring_writes_predictions_of_the_champion(world):
    demo, mlflow = world
    state = score_batch(
        batch=ScoringBatch(max_entities=300), output_dir=str(demo.settings.predictions_dir),
        dataset_block=demo.dataset_block, feast_block=demo.feast_block,
        mlflow_block=mlflow.block_name, return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message
    result: ScoringResult = state.result()
    assert result.rows == 300
    assert result.model_version == "1"
    path = demo.settings.predictions_dir / mlflow.model_name / "v1"
    assert str(path) in result.path
    predictions = pd.read_parquet(result.path)
    assert len(predictions) == 300
    assert predictions["score"].between(0, 1).all()
    assert predictions["customer_id"].is_unique
    assert set(predictions["model_version"]) == {"1"}
    # Materialized just before: the newest customers all have online features.
    assert result.rows_without_features == 0
    assert result.rows_with_missing_features < 0.05 * result.rows  # the demo's natural nulls
    (artifact,) = artifacts_of(state.state_details.flow_run_id)
    assert artifact.key == names.ARTIFACT_SCORING
    assert result.path in artifact.data


def test_scoring_refuses_a_model_whose_signature_does_not_match(world):
    demo, mlflow = world
    state = score_batch(
        features=FeatureSelection(features=["customer_activity:monthly_charges"]),
        dataset_block=demo.dataset_block, feast_block=demo.feast_block,
        mlflow_block=mlflow.block_name, return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    with pytest.raises(ModelSignatureError, match=r"signature needs \[.*'plan'.*\]"):
        state.result()


def test_a_pushed_batch_is_announced_once_and_its_drift_detected(world):
    from driftloop.app.demo.setup import add_batch
    from driftloop.core.dataset_events import announce_revision

    demo, mlflow = world
    revision = add_batch(demo.settings, rows=1500, drift=STRONG_DRIFT)
    # The push announces it, as `driftloop add-batch` does; the scheduled check then does not.
    event_id = announce_revision(
        demo.dataset_name, revision.commit, revision.md5, revision.rows, revision.path, by="test"
    )
    assert event_id is not None
    assert detect_new_data(dataset_block=demo.dataset_block) is None
    resource = names.dataset_resource_id(demo.dataset_name)
    found = events(names.EVENT_DATASET_UPDATED, resource, at_least=2)
    assert [e.payload["md5"] for e in found].count(revision.md5) == 1

    # The batch's rows are older than the last materialization (late data); scoring its
    # customers still finds their features online.
    state = score_batch(
        batch=ScoringBatch(max_entities=300), output_dir=str(demo.settings.predictions_dir),
        dataset_block=demo.dataset_block, feast_block=demo.feast_block,
        mlflow_block=mlflow.block_name, return_state=True,
    )  # fmt: skip
    assert state.result().rows_without_features == 0

    state = monitor(demo, mlflow)
    result: DriftResult = state.result()
    assert result.detected
    assert {"monthly_charges", "plan"} <= set(result.drifted_columns)
    (event,) = events(names.EVENT_DRIFT_DETECTED, names.model_resource_id(mlflow.model_name))
    assert sorted(event.payload["drifted_columns"]) == sorted(result.drifted_columns)
    assert event.payload["drift_share"] == pytest.approx(result.drift_share)
    # The batch's labels are new to every version: the retraining automation may fire, on the
    # revision the check resolved.
    assert event.payload["rev"] == revision.commit == demo.registry.head()
    assert event.payload["new_labels"] is True
    assert event.resource[names.LABEL_NEW_LABELS] == "true"
    # Each check is a point in the champion version's drift series; the artifact shows them.
    history_run = mlflow.block.monitoring_run(names.MONITOR_DRIFT, mlflow.model_name, "1")
    series = mlflow.client().get_metric_history(history_run, "drift_share")
    assert len(series) >= 2
    assert sorted(series, key=lambda m: m.step)[-1].value == pytest.approx(result.drift_share)
    (artifact,) = artifacts_of(state.state_details.flow_run_id)
    assert f"at the last {len(series)} check(s) of v1" in artifact.data


def test_editing_the_policy_block_changes_the_next_run(world):
    """Configuration is a block edit (here from code; the UI does the same), no code change."""
    from blocks import DriftPolicy

    demo, mlflow = world
    DriftPolicy(drift_share=1.0, num_method="psi", threshold=0.5).save(
        demo.drift_block, overwrite=True
    )
    try:
        result: DriftResult = monitor(demo, mlflow).result()
    finally:
        DriftPolicy().save(demo.drift_block, overwrite=True)
    assert not result.detected
    assert result.drift_share_threshold == 1.0
    numeric = [c for c in result.columns if c.column == "monthly_charges"]
    assert "psi" in numeric[0].method.lower()
    assert numeric[0].threshold == 0.5


def test_bad_input_fails_with_a_clear_error(world, tmp_path):
    demo, mlflow = world
    empty = make_mlflow(tmp_path / "empty")
    state = monitor(demo, empty)
    with pytest.raises(NoChampionError, match=f"{empty.model_name}.*no 'champion' alias"):
        state.result()

    from datetime import UTC, datetime

    long_ago = DriftWindow(days=1, end=datetime(2001, 1, 1, tzinfo=UTC))
    state = monitor(demo, mlflow, window=long_ago)
    window = "2000-12-31 00:00 to 2001-01-01 00:00 UTC holds 0 rows"
    with pytest.raises(NotEnoughDataError, match=window):
        state.result()


def test_materialization_flow_fills_the_online_store(world):
    from flows.materialization import materialize

    demo, _ = world
    state = materialize(feast_block=demo.feast_block, return_state=True)
    assert state.is_completed(), state.message
    from blocks import FeastFeatureStore

    store = FeastFeatureStore.load(demo.feast_block).store()
    newest = demo.registry.read_table().nlargest(5, "event_timestamp")["customer_id"].tolist()
    online = store.get_online_features(
        features=["customer_activity:monthly_charges"],
        entity_rows=[{"customer_id": c} for c in newest],
    ).to_df()
    assert online["monthly_charges"].notna().all()
