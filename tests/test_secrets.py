"""Credentials never leak: run the flows with a recognisable secret in the MLflow block, then
search everything the Prefect API and MLflow recorded for it.

The MLflow store here is SQLite, which ignores credentials; the secret is still configured the
way a user configures one (SecretStr fields of the block), so every path that could copy it into
logs, parameters, artifacts, events, params or tags is exercised.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from driftloop.app.demo import DEMO_FEATURE_SERVICE
from driftloop.core.params import FeatureSelection, ScoringBatch, SearchPolicy
from flows.batch_scoring import score_batch
from flows.drift_monitoring import monitor_drift
from flows.training import train
from tests.conftest import make_demo
from tests.helpers import read_all_events, unique

SECRET = f"dl-secret-{uuid.uuid4().hex}"


def _api(method: str, path: str, body: dict | None = None) -> object:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.request(method, path, json=body).json()


def _events_since(since: datetime) -> list[dict]:
    """Every event since ``since`` (all pages), as the JSON the API serves, to search as text."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter

    with get_client(sync_client=True) as client:
        found = read_all_events(client, EventFilter(occurred=EventOccurredFilter(since=since)))
    return [event.model_dump(mode="json") for event in found]


@pytest.fixture(scope="module")
def secret_world(prefect_server, ray_session, tmp_path_factory):
    from pydantic import SecretStr

    from blocks import DriftPolicy
    from blocks.mlflow import MlflowTracking

    root = tmp_path_factory.mktemp("secrets")
    demo = make_demo(root)
    block = MlflowTracking(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_location=str(root / "artifacts"),
        experiment_name=unique("exp"),
        registered_model_name=unique("model"),
        username="driftloop",
        password=SecretStr(SECRET),
        token=SecretStr(SECRET),
    )
    mlflow_block = unique("secret-mlflow")
    block.save(mlflow_block)
    drift_block = unique("drift")
    DriftPolicy().save(drift_block)
    return demo, block, mlflow_block, drift_block


def test_a_configured_secret_appears_nowhere(secret_world):
    import logging

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    demo, block, mlflow_block, drift_block = secret_world
    started = datetime.now(UTC) - timedelta(seconds=5)
    # The session logs at WARNING; record INFO here, as a deployed run does, so that every log
    # line the flows write reaches the API and is searched.
    prefect_logger = logging.getLogger("prefect")
    level = prefect_logger.level
    prefect_logger.setLevel(logging.INFO)
    common = {"feast_block": demo.feast_block, "mlflow_block": mlflow_block}
    try:
        states = [
            train(features=FeatureSelection(feature_service=DEMO_FEATURE_SERVICE),
                  search=SearchPolicy(n_trials=2), dataset_block=demo.dataset_block, **common,
                  return_state=True),
            monitor_drift(drift_block=drift_block, dataset_block=demo.dataset_block,
                          **common, return_state=True),
            score_batch(batch=ScoringBatch(max_entities=100), dataset_block=demo.dataset_block,
                        output_dir=str(demo.settings.predictions_dir), **common,
                        return_state=True),
        ]  # fmt: skip
    finally:
        prefect_logger.setLevel(level)
    for state in states:
        assert state.is_completed(), state.message
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)

    run_ids = [str(s.state_details.flow_run_id) for s in states]
    recorded = {
        "flow runs": _api("POST", "/flow_runs/filter", {"flow_runs": {"id": {"any_": run_ids}}}),
        "task runs": _api("POST", "/task_runs/filter",
                          {"flow_runs": {"id": {"any_": run_ids}}, "limit": 200}),
        "logs": _api("POST", "/logs/filter",
                     {"logs": {"flow_run_id": {"any_": run_ids}}, "limit": 200}),
        "artifacts": _api("POST", "/artifacts/filter",
                          {"artifacts": {"flow_run_id": {"any_": run_ids}}}),
        "events": _events_since(started),
        "block documents": _api("POST", "/block_documents/filter", {}),
    }  # fmt: skip
    assert len(recorded["logs"]) > 20
    assert len(recorded["artifacts"]) >= 3
    assert len(recorded["events"]) > 10
    for what, data in recorded.items():
        assert SECRET not in json.dumps(data, default=str), f"the secret leaked into {what}"

    client = block.activate()
    experiment = client.get_experiment_by_name(block.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 4  # training run, 2 trial child runs, drift check
    for run in runs:
        data = {"params": run.data.params, "tags": run.data.tags, "name": run.info.run_name}
        assert SECRET not in json.dumps(data), f"the secret leaked into MLflow run {run.info}"
    for version in client.search_model_versions(f"name='{block.registered_model_name}'"):
        assert SECRET not in json.dumps(version.tags)
    # The secret was really configured: the block returns it to code that asks.
    assert block.token.get_secret_value() == SECRET
