"""The model search inside the training flow: trials on Ray, ranked, logged, cached."""

from __future__ import annotations

import pytest

from driftloop.core import names
from driftloop.core.contracts import Metrics, TrialOutcome, TrialResult
from driftloop.core.params import SearchPolicy
from driftloop.core.search import SearchFailedError, best_outcome
from flows.training import train
from tests.helpers import task_states

SEARCH = SearchPolicy(n_trials=5, parallelism=2, seed=3)


def _trial_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted((r for r in runs if r.name.startswith("trial-")), key=lambda r: r.name)


def test_search_runs_trials_on_ray_ranks_and_logs_them(demo, mlflow_setup):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    state = train(**demo.train_kwargs(mlflow_setup, search=SEARCH), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.trials_completed == 5
    assert result.trials_failed == 0
    flow_run_id = state.state_details.flow_run_id

    trial_runs = _trial_runs(flow_run_id)
    assert [r.name.split()[0] for r in trial_runs] == [f"trial-{i:02d}" for i in range(5)]
    for run in trial_runs:
        assert run.state.name == "Completed"
        assert run.state.message.startswith("roc_auc 0.")
        assert " on node " in run.state.message
        assert run.name.split()[1] in {"logreg", "rf", "gbm"}

    with get_client(sync_client=True) as client:
        (artifact,) = [
            a for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[names.ARTIFACT_TRIALS]))
            )
            if a.flow_run_id == flow_run_id
        ]  # fmt: skip
    rows = (
        artifact.data
        if isinstance(artifact.data, list)
        else __import__("json").loads(artifact.data)
    )
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    scores = [row["roc_auc"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(row["node"] and row["attempt"] == 1 for row in rows)

    # The final model is the best trial's configuration.
    best = rows[0]["model"]
    assert best.split()[0] == {"logistic_regression": "logreg", "random_forest": "rf",
                               "gradient_boosting": "gbm"}[result.model["family"]]  # fmt: skip

    client = mlflow_setup.client()
    parent = client.get_run(result.mlflow_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'",
    )
    assert len(children) == 5
    for child in children:
        assert child.info.status == "FINISHED"
        assert "val_roc_auc" in child.data.metrics
        assert "model.family" in child.data.params
        assert child.data.tags[names.TAG_TRIAL_NODE]


def test_trials_are_cached_on_data_params_and_code(demo, mlflow_setup):
    first = train(**demo.train_kwargs(mlflow_setup, search=SEARCH), return_state=True)
    assert first.is_completed()
    # The same training again would be skipped (nothing new); under another gate the model is
    # the same, so the run goes through and every trial comes from the cache.
    again = train(
        **demo.train_kwargs(mlflow_setup, search=SEARCH, gate={"min_improvement": 0.01}),
        return_state=True,
    )
    states = task_states(again.state_details.flow_run_id, expect=["fit-model"])
    trial_states = [s for name, runs in states.items() if name.startswith("trial") for s in runs]
    assert trial_states == ["Cached"] * 5
    assert states["fit-model"] == ["Cached"] * 2  # the judged fit and the refit
    other = train(
        **demo.train_kwargs(mlflow_setup, search=SEARCH.model_copy(update={"seed": 99})),
        return_state=True,
    )
    states = task_states(other.state_details.flow_run_id)
    assert "Completed" in [s for n, runs in states.items() if n.startswith("trial") for s in runs]


def _outcome(number: int, score: float | None) -> TrialOutcome:
    metrics = Metrics(roc_auc=score or 0, f1=0, accuracy=0, log_loss=1 - (score or 0), n_rows=1,
                      positive_rate=0.5)  # fmt: skip
    result = None
    if score is not None:
        result = TrialResult(number=number, label="x", spec={}, score=score, metrics=metrics,
                             node_id="n", node_ip="127.0.0.1", seconds=1)  # fmt: skip
    return TrialOutcome(number=number, label="x", spec={}, state="Completed" if result else
                        "Crashed", task_run_id="t", result=result, error=None if result else
                        "node died")  # fmt: skip


def test_best_outcome_skips_failed_trials_and_refuses_when_none_completed():
    outcomes = [_outcome(0, 0.7), _outcome(1, None), _outcome(2, 0.8)]
    assert best_outcome(outcomes, SearchPolicy()).number == 2
    with pytest.raises(SearchFailedError, match="All 2 model-search trials failed: trial 0"):
        best_outcome([_outcome(0, None), _outcome(1, None)], SearchPolicy())
