"""Nothing about the churn demo is hard-coded: the same flow trains on a differently shaped
dataset (string entity ids, other timestamp and label columns, a boolean label, explicit
feature refs) from its own Feast repo and DVC registry."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest

from blocks import DvcDataset, FeastFeatureStore
from driftloop.app.demo.registry import DataRegistry
from driftloop.app.demo.setup import feast_apply
from driftloop.core import names
from driftloop.core.params import (
    FeatureSelection,
    LogisticRegressionSpec,
    PromotionPolicy,
    SearchPolicy,
)
from flows.training import train
from tests.helpers import make_mlflow, quietly, unique

FEATURES = [
    "account_stats:balance",
    "account_stats:utilisation",
    "account_stats:missed_payments",
    "account_stats:segment",
]

REPO = textwrap.dedent(
    """
    from datetime import timedelta
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.STRING)
    source = FileSource(name="accounts", path="data/accounts.parquet", timestamp_field="ts")
    account_stats = FeatureView(
        name="account_stats",
        entities=[account],
        ttl=timedelta(days=60),
        schema=[
            Field(name="balance", dtype=Float64),
            Field(name="utilisation", dtype=Float64),
            Field(name="missed_payments", dtype=Int64),
            Field(name="segment", dtype=String),
        ],
        source=source,
    )
    """
)


@pytest.fixture
def lending(tmp_path, prefect_server, ray_session):
    rng = np.random.default_rng(0)
    n = 2000
    ids = [f"acct-{i:05d}" for i in range(n)]
    observed = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.uniform(0, 60 * 86400, n)), unit="s"
    )
    utilisation = rng.uniform(0, 1, n)
    missed = rng.poisson(0.5, n)
    segment = rng.choice(["retail", "sme", "premier"], n)
    logit = -2.5 + 3.0 * utilisation + 0.8 * missed - 0.7 * (segment == "premier")
    defaulted = rng.random(n) < 1 / (1 + np.exp(-logit))

    repo = tmp_path / "lending_features"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(
        "project: lending\nprovider: local\nregistry: data/registry.db\n"
        "online_store: {type: sqlite, path: data/online.db}\n"
        "offline_store: {type: file}\nentity_key_serialization_version: 3\n"
    )
    (repo / "definitions.py").write_text(REPO)
    pd.DataFrame(
        {
            "account_id": ids,
            "ts": observed - pd.Timedelta(days=2),
            "balance": rng.normal(5000, 1500, n),
            "utilisation": utilisation,
            "missed_payments": missed,
            "segment": segment,
        }
    ).to_parquet(repo / "data" / "accounts.parquet")
    with quietly():
        feast_apply(repo)

    registry = DataRegistry(tmp_path / "loans", tmp_path / "loans-remote", "tables/loans.parquet")
    with quietly():
        registry.init()
        registry.commit_table(
            pd.DataFrame({"account_id": ids, "observed_at": observed, "defaulted": defaulted}),
            "loans",
        )
    dataset, feast = unique("loans"), unique("lending")
    DvcDataset(
        name="loans",
        repo=str(registry.repo),
        path=registry.table_path,
        entity_columns=["account_id"],
        timestamp_column="observed_at",
        label_column="defaulted",
    ).save(dataset)
    FeastFeatureStore(repo_path=str(repo)).save(feast)
    return dataset, feast


def test_training_flow_runs_on_another_dataset_shape(lending, tmp_path):
    dataset, feast = lending
    mlflow = make_mlflow(tmp_path / "mlflow", model_name="default-model")
    state = train(
        features=FeatureSelection(features=FEATURES),
        search=SearchPolicy(n_trials=4, families=["logistic_regression", "random_forest"]),
        model=LogisticRegressionSpec(C=0.5),
        gate=PromotionPolicy(floor=0.6),
        dataset_block=dataset,
        feast_block=feast,
        mlflow_block=mlflow.block_name,
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result.promoted
    assert result.metrics["roc_auc"] > 0.65
    version = mlflow.client().get_model_version("default-model", result.version)
    assert version.tags[names.TAG_FEAST_FEATURES] == ",".join(FEATURES)
    assert version.tags[names.TAG_DVC_PATH] == "tables/loans.parquet"
    assert version.tags[names.TAG_FEAST_PROJECT] == "lending"

    import mlflow as mlflow_lib

    model = mlflow_lib.pyfunc.load_model(f"models:/default-model@{names.ALIAS_CHAMPION}")
    assert model.metadata.get_input_schema().input_names() == [
        "balance", "utilisation", "missed_payments", "segment"
    ]  # fmt: skip
