"""The serving application against real components: a Ray head (`ray start`), Ray Serve, a
private demo (DVC registry, Feast repo with its SQLite online store), MLflow on SQLite, the
session's Prefect server for the blocks, and `driftloop serve` as its own process.

The tests build on each other in file order: a champion (v1) is trained and served, a second
version (v2) is registered, then the champion moves to v2 and back while load runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest

from driftloop.core import names
from driftloop.core import prediction_log as plog
from driftloop.core.params import LogisticRegressionSpec
from flows.training import train
from tests.conftest import free_port, make_demo
from tests.helpers import RayNodes, make_mlflow, unique
from tests.stack import ServingProbe

pytestmark = pytest.mark.slow

ENTITY = "customer_id"


class Served:
    """What the tests share: the demo, MLflow, the Ray head, the serve process, its URL."""

    def __init__(self, root: Path, demo: Any, mlflow: Any, nodes: RayNodes, block: str, port: int):
        self.root = root
        self.demo = demo
        self.mlflow = mlflow
        self.nodes = nodes
        self.block = block
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = root / "served"
        self.log_file = root / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> None:
        env = {**os.environ, "RAY_ADDRESS": self.nodes.address}
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "driftloop.app.serving.run", "--block", self.block],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_file.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health").status_code == 200:
                    return
            time.sleep(1)
        raise AssertionError(f"serving did not become healthy:\n{self.log_file.read_text()}")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def predict(self, body: Any) -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(
            "/predict", content=data, headers={"content-type": "application/json"}
        )

    def served_version(self) -> str | None:
        return (self.http.get("/model").json()["champion"] or {}).get("version")

    def online_entities(self, count: int) -> list[int]:
        """Entities the online store has features for (the newest materialized ones)."""
        table = pd.read_parquet(self.demo.settings.feast_dir / "data" / "customer_profile.parquet")
        return [int(i) for i in table[ENTITY].drop_duplicates().tail(count)]

    def log_rows(self) -> pd.DataFrame:
        files = sorted(self.log_dir.glob("*/date=*/part-*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame()


@pytest.fixture(scope="module")
def served(prefect_server, ray_session, tmp_path_factory):
    from blocks import RayCluster, ServingConfig
    from flows.materialization import materialize

    root = tmp_path_factory.mktemp("serving")
    demo = make_demo(root)
    mlflow = make_mlflow(root / "mlflow")
    state = train(**demo.train_kwargs(mlflow), return_state=True)
    assert state.is_completed(), state.message
    assert materialize(feast_block=demo.feast_block, late_data_days=366) is not None

    temp_dir = Path(tempfile.mkdtemp(prefix="dlsrv-", dir="/tmp"))
    nodes = RayNodes(temp_dir=temp_dir, log_dir=root / "ray-logs")
    nodes.start_head(num_cpus=1)
    ray_block, block, port = unique("ray"), unique("serving"), free_port()
    RayCluster(address=nodes.address).save(ray_block)
    ServingConfig(
        port=port, mlflow_block=mlflow.block_name, feast_block=demo.feast_block,
        ray_block=ray_block, prediction_log_dir=str(root / "served"), shadow_challenger=True,
        alias_poll_s=2.0, log_flush_s=1.0, max_rows=50, max_body_bytes=20_000,
    ).save(block)  # fmt: skip
    world = Served(root, demo, mlflow, nodes, block, port)
    world.start()
    yield world
    if world.process and world.process.poll() is None:
        world.stop()
    nodes.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_predict_by_entity_names_the_champion(served):
    ids = served.online_entities(3)
    response = served.predict({ENTITY: ids})
    assert response.status_code == 200, (response.text, served.http.get("/model").json())
    body = response.json()
    assert (body["model"], body["version"]) == (served.mlflow.model_name, "1")
    assert response.headers["x-driftloop-model-version"] == "1"
    assert [p[ENTITY] for p in body["predictions"]] == ids
    assert all(0 <= p["score"] <= 1 for p in body["predictions"])


def test_predict_by_features_gives_the_same_scores_as_by_entity(served):
    from feast import FeatureStore

    ids = served.online_entities(4)
    by_entity = served.predict({ENTITY: ids}).json()["predictions"]
    store = FeatureStore(repo_path=str(served.demo.settings.feature_repo_dir))
    refs = served.http.get("/model").json()["champion"]["features"]
    rows = store.get_online_features(
        features=refs, entity_rows=[{ENTITY: i} for i in ids]
    ).to_dict()
    names_ = [r.split(":")[1] for r in refs]
    instances = [{n: rows[n][i] for n in names_} for i in range(len(ids))]
    response = served.predict({"instances": instances})
    assert response.status_code == 200, response.text
    by_features = response.json()["predictions"]
    assert [p["score"] for p in by_features] == pytest.approx([p["score"] for p in by_entity])
    assert [p["imputed"] for p in by_features] == [p["imputed"] for p in by_entity]


def _refs(served) -> list[str]:
    return [r.split(":")[1] for r in served.http.get("/model").json()["champion"]["features"]]


def _one_instance(served) -> dict[str, Any]:
    categorical = {"plan", "contract", "payment_method", "region"}
    return {n: ("basic" if n in categorical else 1.0) for n in _refs(served)}


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("unknown entity", 404, r"unknown entity id\(s\) \[\{'customer_id': 999999999\}\]"),
        ("missing feature", 422, r"instances\[0\] lacks feature\(s\) \['plan'\]"),
        ("wrong type", 422, r"instances\[0\]\.plan is 3 \(number\); it is a categorical"),
        ("wrong id type", 422, r"customer_id\[1\] is 'abc' \(string\); customer_id ids are"),
        ("empty body", 400, r"the body is empty"),
        ("empty object", 400, r"the body is an empty object"),
        ("not json", 400, r"the body is not JSON"),
        ("too large", 413, r"the body is \d+ bytes; the limit is 20000"),
        ("too many rows", 413, r"60 entities; the limit is 50"),
        ("unknown key", 400, r"unknown key\(s\) \['oops'\]"),
    ],
)
def test_bad_requests_get_a_4xx_that_names_the_problem(served, case, status, message):
    import re

    good = _one_instance(served)
    bodies: dict[str, Any] = {
        "unknown entity": {ENTITY: [served.online_entities(1)[0], 999999999]},
        "missing feature": {"instances": [{k: v for k, v in good.items() if k != "plan"}]},
        "wrong type": {"instances": [{**good, "plan": 3}]},
        "wrong id type": {ENTITY: [1, "abc"]},
        "empty body": b"",
        "empty object": {},
        "not json": b"{customer_id: 1",
        "too large": {"instances": [good] * 200},
        "too many rows": {ENTITY: list(range(60))},
        "unknown key": {ENTITY: [1], "oops": 2},
    }
    response = served.predict(bodies[case])
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["error"]), response.json()["error"]
    assert response.json()["version"] == "1"
    # The replica lives on: the next good request is answered.
    assert served.predict({ENTITY: served.online_entities(1)}).status_code == 200


def test_a_missing_online_feature_is_flagged_per_row_not_silently_imputed(served):
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(served.demo.settings.feature_repo_dir))
    ids = served.online_entities(400)
    values = store.get_online_features(
        features=["customer_activity:avg_session_minutes"],
        entity_rows=[{ENTITY: i} for i in ids],
    ).to_dict()
    with_null = [i for i, v in zip(ids, values["avg_session_minutes"], strict=True) if v is None]
    assert with_null, "the demo has entities whose avg_session_minutes is not tracked"
    complete = [i for i in ids if i not in with_null][:1]
    response = served.predict({ENTITY: [with_null[0], *complete]})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert rows[0]["imputed"] == ["avg_session_minutes"]
    assert rows[1]["imputed"] == []


def test_the_prediction_log_records_what_was_served(served):
    ids = served.online_entities(5)
    request_id = served.predict({ENTITY: ids}).json()["request_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = served.log_rows()
        if len(rows) and request_id in set(rows[plog.COL_REQUEST_ID]):
            break
        time.sleep(0.5)
    mine = rows[rows[plog.COL_REQUEST_ID] == request_id]
    assert list(mine[ENTITY]) == ids
    assert set(mine[plog.COL_ROLE]) == {plog.ROLE_CHAMPION}
    assert set(mine[plog.COL_VERSION]) == {"1"}
    assert set(_refs(served)) <= set(mine.columns)
    assert mine[names.SCORE_COLUMN].between(0, 1).all()


def test_metrics_are_scrapeable(served):
    text = served.http.get("/metrics").text
    model = served.mlflow.model_name
    assert f'driftloop_serving_champion_version{{model="{model}"' in text
    assert "driftloop_serving_request_duration_seconds_bucket" in text
    assert 'kind="unknown_entity"' in text
    assert 'code="200"' in text and 'mode="entity"' in text


def test_a_second_version_is_registered_as_challenger_and_scores_in_shadow(served):
    # A logistic regression on the same data: whichever way the gate goes, there are two
    # versions; the aliases are then set as this test needs them.
    state = train(
        **served.demo.train_kwargs(served.mlflow, model=LogisticRegressionSpec()),
        return_state=True,
    )
    assert state.is_completed(), state.message
    client = served.mlflow.client()
    name = served.mlflow.model_name
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, "1")
    client.set_registered_model_alias(name, names.ALIAS_CHALLENGER, "2")
    state = served.http.post("/admin/reload").json()
    assert (state["champion"]["version"], state["shadow"]["version"]) == ("1", "2")
    body = served.predict({ENTITY: served.online_entities(3)}).json()
    assert body["version"] == "1"
    assert "shadow" not in json.dumps(body)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = served.log_rows()
        mine = rows[rows[plog.COL_REQUEST_ID] == body["request_id"]] if len(rows) else rows
        if set(mine.get(plog.COL_ROLE, [])) == {plog.ROLE_CHAMPION, plog.ROLE_SHADOW}:
            break
        time.sleep(0.5)
    by_role = {role: list(group[plog.COL_VERSION]) for role, group in mine.groupby(plog.COL_ROLE)}
    assert by_role == {plog.ROLE_CHAMPION: ["1"] * 3, plog.ROLE_SHADOW: ["2"] * 3}


def test_each_version_scores_as_its_mlflow_model_does_compiled_where_it_can(served):
    """What the replica answered and logged, for the champion (v1, gradient boosting) and the
    shadow (v2, a logistic regression), is what each MLflow model gives for the logged
    features, whichever scorer answered; `/model` names the scorer, and why not ONNX."""
    from blocks.feast import FeastFeatureStore
    from driftloop.app.serving.model import load_alias

    state = served.http.get("/model").json()
    for role in ("champion", "shadow"):
        model = state[role]
        if model["scorer"] == "onnx":
            assert model["parity"]["parity_rows"] > 100, model
            assert model["parity"]["max_difference"] < 1e-5, model
        else:
            assert (model["scorer"], bool(model["scorer_note"])) == ("mlflow-pyfunc", True)
    # skl2onnx converts a logistic regression: v2 is served compiled.
    assert state["shadow"]["scorer"] == "onnx", state["shadow"]

    body = served.predict({ENTITY: served.online_entities(25)}).json()
    deadline = time.monotonic() + 30
    while True:
        rows = served.log_rows()
        mine = rows[rows[plog.COL_REQUEST_ID] == body["request_id"]] if len(rows) else rows
        if len(mine) == 50 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(mine) == 50, mine
    feast = FeastFeatureStore.load(served.demo.feast_block)
    tracking = served.mlflow.block
    for role, alias in ((plog.ROLE_CHAMPION, names.ALIAS_CHAMPION),
                        (plog.ROLE_SHADOW, names.ALIAS_CHALLENGER)):  # fmt: skip
        pyfunc = load_alias(tracking, feast, feast.store(), alias, compiled=False)
        assert pyfunc is not None and pyfunc.scorer == "mlflow-pyfunc"
        logged = mine[mine[plog.COL_ROLE] == role]
        assert list(logged[plog.COL_VERSION].unique()) == [pyfunc.version]
        expected = pyfunc.score(logged[pyfunc.feature_names].reset_index(drop=True))
        assert list(logged[names.SCORE_COLUMN]) == pytest.approx(list(expected), abs=1e-5)
    champion_scores = [p["score"] for p in body["predictions"]]
    logged = mine[mine[plog.COL_ROLE] == plog.ROLE_CHAMPION]
    assert champion_scores == pytest.approx(list(logged[names.SCORE_COLUMN]), abs=1e-12)


def _wait_for_version(served: Served, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while served.served_version() != version:
        assert time.monotonic() < deadline, served.http.get("/model").json()
        time.sleep(0.2)


def test_promotion_and_rollback_swap_under_load_without_a_failed_request(served):
    from flows.rollback import roll_back_champion
    from flows.serving_swap import swap_serving_model

    client = served.mlflow.client()
    name = served.mlflow.model_name
    # Requests back to back (no pause) from a thread while the model swaps.
    body = json.dumps({ENTITY: served.online_entities(2)})
    with ServingProbe(served.url, body, every_s=0) as load:
        time.sleep(2)
        # The alias moved by hand, in the registry only: the replicas' poll swaps.
        client.set_registered_model_alias(name, names.ALIAS_CHAMPION, "2")
        _wait_for_version(served, "2", timeout=30)
        time.sleep(2)
        # A rollback by the flow: it moves the alias back and announces v1 as the champion;
        # the swap flow (what that announcement's automation runs) asks the application to
        # reload, and checks that it serves v1.
        rollback = roll_back_champion(
            to_version=1, reason="test", mlflow_block=served.mlflow.block_name
        )
        assert (rollback.from_version, rollback.to_version) == ("2", "1")
        state = swap_serving_model(serving_block=served.block, return_state=True)
        assert state.is_completed(), state.message
        assert state.result().served_version == "1"
        time.sleep(2)
    assert not load.failed(), load.failed()[:5]
    versions = [version for _, version in load.answers]
    assert versions[-1] == "1"
    assert {"1", "2"} <= set(versions), Counter(load.answers)
    assert len(load.answers) > 50, Counter(load.answers)


def test_a_version_that_cannot_be_served_is_not_swapped_in(served):
    from mlflow import MlflowClient

    client: MlflowClient = served.mlflow.client()
    name = served.mlflow.model_name
    run = client.get_model_version(name, "1").run_id
    # A version without driftloop's lineage (registered by hand from a run with no feature
    # tags): the replica cannot know its features, so it keeps serving v1.
    bare = client.create_run(client.get_run(run).info.experiment_id).info.run_id
    source = client.get_model_version(name, "1").source
    version = client.create_model_version(name, source, run_id=bare).version
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, version)
    state = served.http.post("/admin/reload").json()
    assert state["champion"]["version"] == "1"
    assert "feast.features" in state["last_error"], state
    assert served.predict({ENTITY: served.online_entities(1)}).json()["version"] == "1"
    # The same version as challenger does not hold up a promotion: the champion swaps, and
    # only the shadow is left out.
    client.set_registered_model_alias(name, names.ALIAS_CHALLENGER, version)
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, "2")
    state = served.http.post("/admin/reload").json()
    assert (state["champion"]["version"], state["shadow"]) == ("2", None)
    assert state["last_error"].startswith("challenger: "), state
    client.set_registered_model_alias(name, names.ALIAS_CHAMPION, "1")
    client.set_registered_model_alias(name, names.ALIAS_CHALLENGER, "2")
    state = served.http.post("/admin/reload").json()
    assert (state["champion"]["version"], state["shadow"]["version"]) == ("1", "2")


def test_drift_monitoring_reads_what_was_served(served):
    """The prediction log as the drift monitor's window (`window.source = served`): the
    features the champion was really given, against its training reference."""
    from blocks import DriftPolicy
    from driftloop.core.params import DriftWindow
    from flows.drift_monitoring import monitor_drift

    # Traffic over many customers, so the window is a sample of production, not one entity.
    ids = served.online_entities(600)
    sent = set()
    for start in range(0, len(ids), 50):
        response = served.predict({ENTITY: ids[start : start + 50]})
        assert response.status_code == 200
        sent.add(response.json()["request_id"])
    deadline = time.monotonic() + 30
    while not sent <= set(served.log_rows()[plog.COL_REQUEST_ID]):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    policy = unique("drift")
    DriftPolicy(min_rows=200).save(policy)
    state = monitor_drift(
        window=DriftWindow(days=1, source="served"), drift_block=policy,
        feast_block=served.demo.feast_block, mlflow_block=served.mlflow.block_name,
        dataset_block=served.demo.dataset_block, serving_block=served.block, return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message
    result = state.result()
    champion_rows = served.log_rows()
    champion_rows = champion_rows[champion_rows[plog.COL_ROLE] == plog.ROLE_CHAMPION]
    assert result.current_rows == len(champion_rows)
    assert result.prediction is not None


def test_served_drift_without_traffic_says_so(served, tmp_path):
    from blocks import DriftPolicy, ServingConfig
    from driftloop.core.errors import NotEnoughDataError
    from driftloop.core.params import DriftWindow
    from flows.drift_monitoring import monitor_drift

    empty = unique("serving")
    ServingConfig(prediction_log_dir=str(tmp_path / "nothing-served")).save(empty)
    policy = unique("drift")
    DriftPolicy(min_rows=200).save(policy)
    state = monitor_drift(
        window=DriftWindow(days=1, source="served"), drift_block=policy,
        feast_block=served.demo.feast_block, mlflow_block=served.mlflow.block_name,
        dataset_block=served.demo.dataset_block, serving_block=empty, return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    with pytest.raises(NotEnoughDataError, match=r"nothing-served/.+ holds 0 rows served"):
        state.result()


def test_stopping_writes_the_last_batch_and_leaves_no_replica(served):
    from driftloop.app.supervisor import session_members

    request_id = served.predict({ENTITY: served.online_entities(7)}).json()["request_id"]
    assert served.stop() == 0
    rows = served.log_rows()
    mine = rows[rows[plog.COL_REQUEST_ID] == request_id]
    # The champion's rows and the shadow challenger's, none lost.
    assert mine[plog.COL_ROLE].value_counts().to_dict() == {
        plog.ROLE_CHAMPION: 7,
        plog.ROLE_SHADOW: 7,
    }
    with pytest.raises(httpx.HTTPError):
        served.http.get("/health", timeout=5)
    # The application was deleted and, with no other one left, Serve itself shut down: no
    # replica, controller or proxy lives on in the Ray head.
    head = session_members(served.nodes.nodes["head"].pid)
    titles = [" ".join(psutil.Process(pid).cmdline()) for pid in head if psutil.pid_exists(pid)]
    assert not [t for t in titles if "Serve" in t], titles
