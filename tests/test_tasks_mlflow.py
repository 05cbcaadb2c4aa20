"""The MLflow-side tasks, run as real Prefect tasks against MLflow on SQLite."""

from __future__ import annotations

import pytest

from blocks import FeastFeatureStore
from driftloop.core import names
from driftloop.core.contracts import ChampionEvaluation, DatasetLocation, TableSchema
from driftloop.core.errors import NoChampionError, RollbackError
from driftloop.core.params import (
    DataQualityPolicy,
    FeatureSelection,
    LogisticRegressionSpec,
    PromotionPolicy,
    SplitPolicy,
    TriggerContext,
)
from tasks.announce_decision import announce_decision
from tasks.decide_promotion import decide_promotion
from tasks.evaluate_champion import evaluate_champion
from tasks.evaluate_model import evaluate_model
from tasks.fit_model import fit_model
from tasks.get_champion import get_champion
from tasks.get_historical_features import get_historical_features
from tasks.load_labeled_entities import load_labeled_entities
from tasks.log_to_mlflow import log_to_mlflow
from tasks.move_champion import move_champion
from tasks.plan_rollback import plan_rollback
from tasks.promote_model import ChampionMovedError, promote_model
from tasks.record_decision import record_decision
from tasks.register_model import register_model_version
from tasks.registry import require_champion
from tasks.resolve_dataset import resolve_dataset
from tasks.resolve_features import resolve_features
from tasks.split_holdout import split_holdout
from tests.helpers import events, make_mlflow

SCHEMA = TableSchema(
    entity_columns=("customer_id",), timestamp_column="event_timestamp", label_column="churned"
)
SPEC = LogisticRegressionSpec()
SPLIT = SplitPolicy()


@pytest.fixture(scope="module")
def trained(demo):
    feast = FeastFeatureStore.load_named(demo.feast_block)
    dataset = resolve_dataset(
        DatasetLocation(repo=str(demo.registry.repo), path=demo.registry.table_path,
                        rev=demo.tags[0])
    )  # fmt: skip
    features = resolve_features(feast, FeatureSelection(feature_service="churn_model_v1"))
    entities = load_labeled_entities(dataset, SCHEMA)
    frame = get_historical_features(entities, dataset, features, SCHEMA, feast, DataQualityPolicy())
    train, holdout = split_holdout(frame, SCHEMA, SPLIT)
    model = fit_model(train, features, SCHEMA, SPEC, 0)
    metrics = evaluate_model(model, holdout, features, SCHEMA)
    return dataset, features, train, holdout, model, metrics


def log(trained, mlflow, random_state: int = 0):
    dataset, features, train, _, model, metrics = trained
    return log_to_mlflow(
        model, train, mlflow.block, dataset, features, SCHEMA, SPEC, random_state, SPLIT, metrics,
        TriggerContext(reason="unit test", drifted_columns=["plan"]),
    )  # fmt: skip


def test_log_to_mlflow_records_everything(trained, tmp_path):
    mlflow = make_mlflow(tmp_path)
    run = log(trained, mlflow)
    data = mlflow.client().get_run(run.run_id).data
    assert data.params["model.family"] == "logistic_regression"
    assert data.params["model.random_state"] == "0"
    assert data.metrics["roc_auc"] == pytest.approx(trained[5].roc_auc)
    assert data.tags[names.TAG_TRIGGER_REASON] == "unit test"
    assert data.tags[names.TAG_TRIGGER_DRIFTED_COLUMNS] == "plan"
    assert data.tags[names.TAG_DVC_MD5] == trained[0].md5
    artifacts = [a.path for a in mlflow.client().list_artifacts(run.run_id, "reference")]
    assert artifacts == [names.REFERENCE_SAMPLE_ARTIFACT]
    import mlflow as mlflow_lib

    info = mlflow_lib.models.get_model_info(run.model_uri)
    assert info.signature.inputs.input_names() == trained[1].names
    assert info.flavors["python_function"]["predict_fn"] == "predict_proba"


def test_registration_is_idempotent_and_marks_the_challenger(trained, tmp_path):
    mlflow = make_mlflow(tmp_path)
    run = log(trained, mlflow)
    first = register_model_version(run, mlflow.block, {"k": "v"})
    again = register_model_version(run, mlflow.block, {"k": "v"})
    assert first.version == again.version == "1"
    client = mlflow.client()
    assert client.get_model_version_by_alias(mlflow.model_name, "challenger").version == 1
    assert get_champion(mlflow.block) is None
    # The one lookup: no champion is a value for training, a clear error for the rest.
    with pytest.raises(NoChampionError, match="has no 'champion' alias yet"):
        require_champion(mlflow.block)


def test_gate_promote_record_and_announce(trained, tmp_path):
    from prefect.client.orchestration import get_client

    mlflow = make_mlflow(tmp_path)
    version = register_model_version(log(trained, mlflow), mlflow.block, {})
    champion = evaluate_champion(None, trained[3], trained[1], SCHEMA, mlflow.block)
    decision = decide_promotion(version, trained[5], champion, PromotionPolicy())
    assert decision.promote

    def decision_tag() -> str:
        return mlflow.client().get_model_version(mlflow.model_name, "1").tags[names.TAG_DECISION]

    # Recorded first, as "promoting"; then the alias moves; the announcement completes it.
    record_decision(decision, log(trained, mlflow), mlflow.block)
    assert decision_tag() == names.DECISION_PROMOTING
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert names.ARTIFACT_PROMOTION in keys
    assert promote_model(decision, mlflow.block) is None  # there was no previous champion
    assert mlflow.champion() == "1"
    event_id = announce_decision(decision, mlflow.block)
    assert decision_tag() == names.DECISION_PROMOTED
    champion = require_champion(mlflow.block)
    assert champion.version == "1"
    assert champion.decision == names.DECISION_PROMOTED
    found = events(names.EVENT_MODEL_PROMOTED, names.model_resource_id(mlflow.model_name))
    assert [str(e.id) for e in found] == [event_id]
    assert found[0].payload["version"] == "1"
    assert set(found[0].payload["metrics"]) >= {"roc_auc", "f1", "accuracy", "log_loss"}
    assert found[0].payload["reason"] == decision.reason

    # A challenger the gate turns down is announced as rejected, with the reason; the
    # champion and its tags stay as they are.
    second = register_model_version(log(trained, mlflow, random_state=1), mlflow.block, {})
    champion_eval = evaluate_champion(get_champion(mlflow.block), trained[3], trained[1], SCHEMA,
                                      mlflow.block)  # fmt: skip
    rejected = decide_promotion(second, trained[5], champion_eval, PromotionPolicy(floor=0.99))
    assert not rejected.promote
    rejected_id = announce_decision(rejected, mlflow.block)
    (rejection,) = events(names.EVENT_MODEL_REJECTED, names.model_resource_id(mlflow.model_name))
    assert str(rejection.id) == rejected_id
    assert rejection.payload["version"] == second.version
    assert rejection.payload["previous_version"] == "1"
    assert rejection.payload["reason"] == rejected.reason
    assert mlflow.champion() == "1"


def test_stale_comparison_is_refused(trained, tmp_path):
    mlflow = make_mlflow(tmp_path)
    version = register_model_version(log(trained, mlflow), mlflow.block, {})
    decision = decide_promotion(
        version, trained[5], ChampionEvaluation(champion=None), PromotionPolicy()
    )
    # Someone else promoted a champion after this run looked (and saw none).
    mlflow.client().set_registered_model_alias(mlflow.model_name, "champion", "1")
    mlflow.client().delete_registered_model_alias(mlflow.model_name, "champion")
    mlflow.client().set_registered_model_alias(mlflow.model_name, "champion", version.version)
    with pytest.raises(ChampionMovedError, match="moved from vNone to v1"):
        promote_model(decision, mlflow.block)


def test_champion_with_other_inputs_is_not_comparable(trained, tmp_path):
    mlflow = make_mlflow(tmp_path)
    version = register_model_version(log(trained, mlflow), mlflow.block, {})
    holdout_without_plan = trained[3].drop(columns=["plan"])
    evaluation = evaluate_champion(version, holdout_without_plan, trained[1], SCHEMA, mlflow.block)
    assert evaluation.metrics is None
    assert "needs inputs ['plan']" in evaluation.not_comparable_reason


def test_a_rollback_flow_brings_back_an_earlier_champion_and_announces_it(trained, tmp_path):
    """v1 promoted, v2 promoted over it, v3 rejected: the flow steps back to v1, records why on
    v2, and announces v1 as a new champion (the automations swap serving and rescore on it);
    every request it cannot honour fails naming the version, and the champion stays."""
    from flows.rollback import roll_back_champion

    mlflow = make_mlflow(tmp_path)
    run = log(trained, mlflow)
    client = mlflow.client()
    name = mlflow.model_name
    register_model_version(run, mlflow.block, {})
    for decision, compared_to in (
        (names.DECISION_PROMOTED, None),
        (names.DECISION_PROMOTED, "1"),
        (names.DECISION_REJECTED, "2"),
    ):
        version = client.create_model_version(name, run.model_uri, run.run_id).version
        client.set_model_version_tag(name, version, names.TAG_DECISION, decision)
        if compared_to:
            client.set_model_version_tag(name, version, names.TAG_COMPARED_TO, compared_to)
    # Version 1 is register_model_version's; the history is versions 2, 3 and 4.
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, "3")
    client.set_model_version_tag(name, "3", names.TAG_COMPARED_TO, "2")

    done = roll_back_champion(reason="v3 answers slowly", mlflow_block=mlflow.block_name)
    assert (done.from_version, done.to_version) == ("3", "2")
    assert mlflow.champion() == "2"
    tags = client.get_model_version(name, "3").tags
    assert tags[names.TAG_ROLLED_BACK_TO] == "2"
    assert tags[names.TAG_ROLLBACK_REASON] == "v3 answers slowly"
    assert tags[names.TAG_DECISION] == names.DECISION_PROMOTED
    (event,) = events(names.EVENT_MODEL_PROMOTED, names.model_resource_id(name))
    assert str(event.id) == done.event_id
    assert event.payload["version"] == "2"
    assert event.payload[names.PAYLOAD_ROLLED_BACK_FROM] == "3"
    assert event.payload["reason"] == "rolled back from v3: v3 answers slowly"

    for to_version, message in (
        (4, "v4 was never promoted (its decision: rejected)"),
        (9, "has no version '9'"),
        (2, "v2 is the champion already"),
        (None, "v2 is its first champion"),
    ):
        state = roll_back_champion(to_version=to_version, mlflow_block=mlflow.block_name,
                                   return_state=True)  # fmt: skip
        assert state.is_failed()
        assert message in state.message, state.message
        assert mlflow.champion() == "2"
    # Naming a version steps forward again.
    assert roll_back_champion(to_version=3, mlflow_block=mlflow.block_name).to_version == "3"
    assert mlflow.champion() == "3"
    # A champion moved by someone else between the plan and the move wins: nothing moves.
    champion = require_champion(mlflow.block)
    source, target = plan_rollback(mlflow.block, champion, None)
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, "1")
    with pytest.raises(RollbackError, match="moved from v3 to v1 while this rollback was planned"):
        move_champion(mlflow.block, source, target, "too late")
    assert mlflow.champion() == "1"


def test_a_resumed_rollback_finishes_its_own_move_instead_of_stepping_back_again(
    trained, tmp_path, monkeypatch
):
    """driftloop resumes an interrupted run with the same parameters. A rollback interrupted
    after it moved the alias (before announcing it) must not step back a second time."""
    from prefect.logging import disable_run_logger

    mlflow = make_mlflow(tmp_path)
    run = log(trained, mlflow)
    client, name = mlflow.client(), mlflow.model_name
    client.create_registered_model(name)
    for compared_to in (None, "1", "2"):
        version = client.create_model_version(name, run.model_uri, run.run_id).version
        client.set_model_version_tag(name, version, names.TAG_DECISION, names.DECISION_PROMOTED)
        if compared_to:
            client.set_model_version_tag(name, version, names.TAG_COMPARED_TO, compared_to)
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, "3")
    # The task functions themselves, as one flow run would call them (its id from the
    # environment, as Prefect's runtime reads it outside a run context).
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "an-interrupted-rollback")
    with disable_run_logger():
        source, target = plan_rollback.fn(mlflow.block, require_champion(mlflow.block), None)
        assert (source.version, target.version) == ("3", "2")
        move_champion.fn(mlflow.block, source, target, "slow answers")
        # Interrupted here; the resumed run sees v2 as the champion, and finishes v3 -> v2.
        again = plan_rollback.fn(mlflow.block, require_champion(mlflow.block), None)
        assert (again[0].version, again[1].version) == ("3", "2")
        move_champion.fn(mlflow.block, *again, "slow answers")
    assert mlflow.champion() == "2"
    # Another run (another id) steps back from v2 as asked.
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "a-later-rollback")
    with disable_run_logger():
        later = plan_rollback.fn(mlflow.block, require_champion(mlflow.block), None)
    assert (later[0].version, later[1].version) == ("2", "1")
