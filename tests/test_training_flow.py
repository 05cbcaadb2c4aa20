"""The training flow end to end: real Prefect server, DVC registry, Feast repo, MLflow."""

from __future__ import annotations

import pandas as pd
import pytest

from driftloop.core import names
from driftloop.core.params import (
    LogisticRegressionSpec,
    PromotionPolicy,
    RandomForestSpec,
)
from flows.training import train
from tests.helpers import events, task_states

# A single depth-1 tree on a random tenth of the features: it barely ranks customers.
WEAK = RandomForestSpec(n_estimators=1, max_depth=1, max_features=0.1)
HEAVY = ("load-labeled-entities", "get-historical-features", "fit-model", "log-to-mlflow")


def run(demo, mlflow, **overrides):
    state = train(**demo.train_kwargs(mlflow, **overrides), return_state=True)
    return state, state.state_details.flow_run_id


def test_first_run_promotes_a_champion_with_lineage(demo, mlflow_setup):
    state, flow_run_id = run(demo, mlflow_setup, rev=demo.tags[-1])
    assert state.is_completed(), state.message
    result = state.result()
    assert result.promoted
    assert result.champion_version == result.version == "1"
    assert mlflow_setup.champion() == "1"

    client = mlflow_setup.client()
    version = client.get_model_version(mlflow_setup.model_name, "1")
    tags = version.tags
    dvc_file = demo.registry.repo / f"{demo.registry.table_path}.dvc"
    assert tags[names.TAG_DVC_REV] == demo.tags[-1]
    assert tags[names.TAG_DVC_MD5] in dvc_file.read_text()
    assert tags[names.TAG_DVC_REPO] == str(demo.registry.repo)
    assert tags[names.TAG_DVC_COMMIT] == result.dataset_commit
    assert "customer_activity:monthly_charges" in tags[names.TAG_FEAST_FEATURES]
    assert tags[names.TAG_FEAST_FEATURE_SERVICE] == "churn_model_v1"
    assert tags[names.TAG_FLOW_RUN_ID] == str(flow_run_id)
    assert tags[names.TAG_FLOW_RUN_URL].endswith(f"/runs/flow-run/{flow_run_id}")
    assert tags[names.TAG_DECISION] == names.DECISION_PROMOTED

    mlflow_run = client.get_run(version.run_id)
    assert set(result.metrics) >= {"roc_auc", "f1", "accuracy", "log_loss"}
    assert mlflow_run.data.metrics["roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    assert mlflow_run.data.params["model.family"] == "gradient_boosting"
    reference = client.download_artifacts(version.run_id, names.REFERENCE_SAMPLE_ARTIFACT)
    sample = pd.read_parquet(reference)
    assert {"monthly_charges", "plan", "churned"} <= set(sample.columns)
    assert len(sample) > 100
    # The registered model is the refit on training plus holdout rows: it has seen the newest
    # rows, and its drift reference reaches them.
    assert mlflow_run.data.params["split.refit_on_holdout"] == "True"
    assert "refit_in_sample_roc_auc" in mlflow_run.data.metrics
    newest = pd.Timestamp(tags[names.TAG_FITTED_UNTIL])
    assert pd.to_datetime(sample["event_timestamp"], utc=True).max() == newest

    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{mlflow_setup.model_name}@champion")
    inputs = model.metadata.get_input_schema().input_names()
    assert "monthly_charges" in inputs
    assert "plan" in inputs
    assert model.metadata.get_output_schema() is not None

    (event,) = events(names.EVENT_MODEL_PROMOTED, names.model_resource_id(mlflow_setup.model_name))
    assert event.payload["version"] == "1"
    assert event.payload["previous_version"] is None
    assert event.payload["metrics"]["roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    assert f"prefect.flow-run.{flow_run_id}" in {r.id for r in event.related}


def test_promotion_artifact_tells_the_decision(demo, mlflow_setup):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    state, flow_run_id = run(demo, mlflow_setup, rev=demo.tags[0])
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[names.ARTIFACT_PROMOTION]))
        )
    mine = [a for a in artifacts if a.flow_run_id == flow_run_id]
    assert len(mine) == 1
    text = mine[0].data
    assert "Promoted" in text
    assert "| roc_auc (gate) |" in text
    assert "champion (none)" in text


def test_a_rerun_is_skipped_a_new_gate_reuses_the_cache_and_new_data_recomputes(demo, mlflow_setup):
    first, _ = run(demo, mlflow_setup, rev=demo.tags[1])
    assert first.is_completed()
    assert "v1 trained on" in first.message  # the run's state says what it did

    # The same data, features, configuration and code: nothing to train, nothing registered.
    again, again_id = run(demo, mlflow_setup, rev=demo.tags[1])
    assert again.is_completed()
    assert again.name == names.STATE_SKIPPED
    assert again.message.startswith("already trained: ")
    skipped = again.result()
    assert skipped.outcome == "skipped"
    assert skipped.version == first.result().version
    # Once its last task's run is recorded, a heavy task's would have been too.
    skipped_states = task_states(again_id, expect=["check-already-trained"])
    assert "check-already-trained" in skipped_states, skipped_states
    assert not any(name in skipped_states for name in HEAVY)
    assert len(mlflow_setup.versions()) == 1

    # Another gate on the same model: judged again, from the cache, without a second version.
    regated, regated_id = run(
        demo, mlflow_setup, rev=demo.tags[1], gate=PromotionPolicy(min_improvement=0.01)
    )
    states = task_states(regated_id, expect=HEAVY)
    for task_name in HEAVY:  # (train-model twice: the judged fit and the refit)
        assert set(states[task_name]) == {"Cached"}, (task_name, states)
    assert regated.result().version == first.result().version
    assert len(mlflow_setup.versions()) == 1

    from driftloop.app.demo.setup import add_batch
    from tests.helpers import quietly

    with quietly():
        revision = add_batch(demo.settings, rows=800, seed=7)
    newer, newer_id = run(demo, mlflow_setup, rev=revision.tag)
    states = task_states(newer_id, expect=HEAVY)
    for task_name in HEAVY:
        assert set(states[task_name]) == {"Completed"}, (task_name, states)
    assert newer.result().version != first.result().version


def test_an_automated_run_trains_the_newest_revision(demo, mlflow_setup):
    """Latest wins: a run started by an older revision's event trains the newest one and says
    so; a person asking for that older revision gets exactly it."""
    newest = demo.registry.head()
    automated, _ = run(
        demo, mlflow_setup, rev=demo.tags[0], trigger={"reason": names.REASON_DATASET_UPDATED}
    )
    result = automated.result()
    assert result.dataset_commit == newest
    assert result.superseded.startswith("revision ")
    assert "superseded by the newer revision" in automated.message

    # Drift asks for a retraining on the same newest revision: nothing new to learn from. The
    # run trains nothing, registers nothing, says why, and tells a person.
    drift = {"reason": names.REASON_DRIFT_DETECTED, "drifted_columns": ["plan"]}
    again, _ = run(demo, mlflow_setup, rev=newest, trigger=drift)
    assert again.name == names.STATE_SKIPPED
    assert again.message.startswith(
        f"no labeled data newer than champion v1 (commit {newest[:8]}); already trained: "
    )
    (event,) = events(
        names.EVENT_RETRAINING_SKIPPED, names.model_resource_id(mlflow_setup.model_name)
    )
    assert event.payload["rev"] == newest
    assert event.payload["trigger"] == names.REASON_DRIFT_DETECTED
    assert len(mlflow_setup.versions()) == 1

    manual, _ = run(demo, mlflow_setup, rev=demo.tags[0])
    assert manual.result().dataset_commit != newest
    assert manual.result().superseded is None


def test_worse_model_keeps_the_champion_and_better_one_replaces_it(demo, mlflow_setup):
    rev = demo.tags[-1]
    weak = WEAK
    strong = LogisticRegressionSpec()
    gate = PromotionPolicy(min_improvement=0.005, floor=0.5)

    first, _ = run(demo, mlflow_setup, rev=rev, model=strong, gate=gate)
    assert first.result().promoted
    worse, _ = run(demo, mlflow_setup, rev=rev, model=weak, gate=gate)
    assert not worse.result().promoted
    assert "vs champion v1" in worse.result().reason
    assert mlflow_setup.champion() == "1"
    challenger = mlflow_setup.client().get_model_version_by_alias(
        mlflow_setup.model_name, names.ALIAS_CHALLENGER
    )
    assert str(challenger.version) == worse.result().version
    assert challenger.tags[names.TAG_DECISION] == names.DECISION_REJECTED


def test_better_model_is_promoted_over_a_weak_champion(demo, mlflow_setup):
    rev = demo.tags[-1]
    gate = PromotionPolicy(min_improvement=0.005, floor=0.5)
    weak, _ = run(demo, mlflow_setup, rev=rev, model=WEAK, gate=gate)
    assert weak.result().promoted  # first model: only the floor applies
    better, _ = run(demo, mlflow_setup, rev=rev, gate=gate)
    result = better.result()
    assert result.promoted
    assert "vs champion v1" in result.reason
    assert mlflow_setup.champion() == result.version == "2"
    promoted = events(
        names.EVENT_MODEL_PROMOTED, names.model_resource_id(mlflow_setup.model_name), at_least=2
    )
    assert {e.payload["version"] for e in promoted} == {"1", "2"}
    assert [e.payload["previous_version"] for e in promoted if e.payload["version"] == "2"] == ["1"]


def test_failure_after_promotion_rolls_the_registry_back(demo, mlflow_setup, monkeypatch):
    """Fault injection: the step after the alias move fails; the champion must be restored."""
    rev = demo.tags[-1]
    gate = PromotionPolicy(min_improvement=0.005, floor=0.5)
    weak, _ = run(demo, mlflow_setup, rev=rev, model=WEAK, gate=gate)
    assert weak.result().promoted

    import tasks.announce_decision as announce_module

    def broken_emit(**kwargs):
        raise RuntimeError("event bus unavailable")

    monkeypatch.setattr(announce_module, "emit_event", broken_emit)
    failed, _ = run(demo, mlflow_setup, rev=rev, gate=gate)
    assert failed.is_failed()
    assert mlflow_setup.champion() == "1"
    client = mlflow_setup.client()
    rolled_back = client.get_model_version(mlflow_setup.model_name, "2")
    assert rolled_back.tags[names.TAG_DECISION] == names.DECISION_ROLLED_BACK
    assert not rolled_back.aliases


def test_a_promotion_interrupted_after_the_alias_moved_is_finished_by_the_rerun(demo, mlflow_setup):
    """The process died between moving the alias and announcing it (no rollback ran): the
    registry shows the new champion as "promoting", and no event went out. The next run on
    the same inputs finishes it: one `model.promoted` event, decision "promoted"."""
    rev = demo.tags[-1]
    gate = PromotionPolicy(min_improvement=0.005, floor=0.5)
    weak, _ = run(demo, mlflow_setup, rev=rev, model=WEAK, gate=gate)
    assert weak.result().promoted
    # A second model, decided and registered (its gate demands the impossible, so it stays a
    # challenger); then made to look like an attempt killed right after the alias moved.
    strict = PromotionPolicy(min_improvement=0.5, floor=0.5)
    rejected, _ = run(demo, mlflow_setup, rev=rev, model=LogisticRegressionSpec(), gate=strict)
    version = rejected.result().version
    client = mlflow_setup.client()
    name = mlflow_setup.model_name
    client.set_model_version_tag(name, version, names.TAG_DECISION, names.DECISION_PROMOTING)
    client.set_model_version_tag(name, version, names.TAG_COMPARED_TO, "1")
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, version)

    rerun, _ = run(demo, mlflow_setup, rev=rev, model=LogisticRegressionSpec(), gate=strict)
    result = rerun.result()
    assert result.promoted
    assert result.version == version
    assert "finishing the promotion" in result.reason
    assert mlflow_setup.champion() == version
    tags = client.get_model_version(name, version).tags
    assert tags[names.TAG_DECISION] == names.DECISION_PROMOTED
    promoted = events(names.EVENT_MODEL_PROMOTED, names.model_resource_id(name), at_least=2)
    mine = [e for e in promoted if e.payload["version"] == version]
    assert len(mine) == 1
    assert mine[0].payload["previous_version"] == "1"
