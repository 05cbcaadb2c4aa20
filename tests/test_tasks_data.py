"""The data tasks, each run as a real Prefect task against the real DVC registry and Feast repo."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from blocks import FeastFeatureStore
from driftloop.core.contracts import DatasetLocation, TableSchema
from driftloop.core.errors import (
    DatasetNotFoundError,
    DatasetUnreadableError,
    DataValidationError,
    FeatureRetrievalError,
)
from driftloop.core.params import (
    DataQualityPolicy,
    FeatureSelection,
    GradientBoostingSpec,
    SplitPolicy,
)
from tasks.evaluate_model import evaluate_model
from tasks.fit_model import fit_model
from tasks.get_historical_features import get_historical_features
from tasks.load_labeled_entities import load_labeled_entities
from tasks.resolve_dataset import resolve_dataset
from tasks.resolve_features import resolve_features
from tasks.split_holdout import split_holdout
from tests.helpers import retries_used

SCHEMA = TableSchema(
    entity_columns=("customer_id",), timestamp_column="event_timestamp", label_column="churned"
)
SERVICE = FeatureSelection(feature_service="churn_model_v1")


@pytest.fixture(scope="module")
def feast(demo) -> FeastFeatureStore:
    return FeastFeatureStore.load_named(demo.feast_block)


def location(demo, rev: str) -> DatasetLocation:
    return DatasetLocation(repo=str(demo.registry.repo), path=demo.registry.table_path, rev=rev)


def test_resolve_dataset_gives_commit_and_content_hash(demo):
    version = resolve_dataset(location(demo, demo.tags[-1]))
    dvc_file = demo.registry.repo / f"{demo.registry.table_path}.dvc"
    assert version.md5 in dvc_file.read_text()
    assert version.commit == demo.registry._git("rev-list", "-n1", demo.tags[-1])
    older = resolve_dataset(location(demo, demo.tags[0]))
    assert older.md5 != version.md5


def test_unknown_revision_fails_fast_with_a_clear_error(demo):
    state = resolve_dataset(location(demo, "no-such-rev"), return_state=True)
    assert state.is_failed()
    with pytest.raises(DatasetNotFoundError, match="Revision 'no-such-rev' does not exist"):
        state.result()
    # Bad input is not retried: with retries the task would have waited 2 + 10 + 30 seconds.
    assert retries_used(state) == 0


def test_missing_path_names_the_path(demo):
    bad = DatasetLocation(repo=str(demo.registry.repo), path="data/nope.parquet", rev="main")
    with pytest.raises(DatasetNotFoundError, match=r"'data/nope\.parquet' does not exist"):
        resolve_dataset(bad)


def test_load_reads_from_the_remote_in_a_fresh_clone(demo, tmp_path):
    clone = tmp_path / "clone"
    demo.registry._git("clone", "-q", str(demo.registry.repo), str(clone))
    loc = DatasetLocation(repo=str(clone), path=demo.registry.table_path, rev=demo.tags[0])
    frame = load_labeled_entities(resolve_dataset(loc), SCHEMA)
    assert len(frame) == demo.registry.read_table().shape[0] // len(demo.tags)
    assert list(frame.columns) == ["customer_id", "event_timestamp", "churned"]


def test_corrupted_parquet_is_reported_as_unreadable(prefect_server, tmp_path):
    from driftloop.app.demo.registry import DataRegistry

    registry = DataRegistry(tmp_path / "repo", tmp_path / "remote", "data/labels.parquet")
    registry.init()
    (registry.repo / "data").mkdir()
    (registry.repo / registry.table_path).write_bytes(b"PAR1 this is not parquet")
    registry.commit_file("corrupt")
    version = resolve_dataset(
        DatasetLocation(repo=str(registry.repo), path=registry.table_path, rev="main")
    )
    with pytest.raises(DatasetUnreadableError, match="is not a readable parquet file"):
        load_labeled_entities(version, SCHEMA)


def test_resolve_features_expands_the_service(demo, feast):
    resolved = resolve_features(feast, SERVICE)
    assert "customer_activity:monthly_charges" in resolved.refs
    kinds = {c.name: c.kind for c in resolved.columns}
    assert kinds["plan"] == "categorical"
    assert kinds["tenure_months"] == "numeric"
    assert resolved.ttl_seconds["customer_activity"] == 30 * 86400
    explicit = resolve_features(feast, FeatureSelection(features=["customer_profile:plan"]))
    assert explicit.names == ["plan"]
    assert explicit.fingerprint != resolved.fingerprint


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (FeatureSelection(feature_service="nope"), "Feature service nope does not exist"),
        (FeatureSelection(features=["nope:x"]), "Feature view nope does not exist"),
        (FeatureSelection(features=["customer_profile:x"]), "has no feature\\(s\\) \\['x'\\]"),
    ],
)
def test_resolve_features_rejects_unknown_names(feast, selection, message):
    with pytest.raises(FeatureRetrievalError, match=message):
        resolve_features(feast, selection)


def _entities(demo, rev):
    version = resolve_dataset(location(demo, rev))
    return version, load_labeled_entities(version, SCHEMA)


def test_historical_features_keep_every_row(demo, feast):
    version, entities = _entities(demo, demo.tags[0])
    resolved = resolve_features(feast, SERVICE)
    frame = get_historical_features(entities, version, resolved, SCHEMA, feast, DataQualityPolicy())
    assert len(frame) == len(entities)
    assert set(resolved.names) <= set(frame.columns)
    assert frame["monthly_charges"].notna().all()


def test_rows_dropped_by_the_ttl_are_named(demo, feast):
    version, entities = _entities(demo, demo.tags[0])
    resolved = resolve_features(feast, SERVICE)
    # Observe three known customers 90 days later: they have activity data, but none within
    # the 30-day TTL of customer_activity, which makes Feast drop them silently.
    late = entities.head(3).copy()
    late["event_timestamp"] = late["event_timestamp"] + pd.Timedelta(days=90)
    request = pd.concat([entities, late], ignore_index=True)
    with pytest.raises(FeatureRetrievalError) as info:
        get_historical_features(request, version, resolved, SCHEMA, feast, DataQualityPolicy())
    message = str(info.value)
    assert f"returned {len(entities)} of {len(request)} entity rows" in message
    assert "3 row(s) were dropped" in message
    assert "customer_activity: 30 days" in message
    assert f"customer_id={late['customer_id'].iloc[0]}" in message


def test_too_many_feature_nulls_fail(demo, feast):
    version, entities = _entities(demo, demo.tags[0])
    resolved = resolve_features(feast, SERVICE)
    # avg_session_minutes is missing for ~2% of customers in the demo data.
    with pytest.raises(FeatureRetrievalError, match="column 'avg_session_minutes'"):
        get_historical_features(
            entities,
            version,
            resolved,
            SCHEMA,
            feast,
            DataQualityPolicy(max_feature_null_share=0.001),
        )


def test_split_train_evaluate(demo, feast):
    version, entities = _entities(demo, demo.tags[-1])
    resolved = resolve_features(feast, SERVICE)
    frame = get_historical_features(entities, version, resolved, SCHEMA, feast, DataQualityPolicy())
    train, holdout = split_holdout(frame, SCHEMA, SplitPolicy(holdout_fraction=0.25))
    assert train["event_timestamp"].max() < holdout["event_timestamp"].min()
    assert len(train) + len(holdout) == len(frame)
    model = fit_model(train, resolved, SCHEMA, GradientBoostingSpec(max_iter=50), 0)
    metrics = evaluate_model(model, holdout, resolved, SCHEMA)
    assert metrics.n_rows == len(holdout)
    assert 0.7 < metrics.roc_auc <= 1.0
    assert 0 < metrics.log_loss < 1


def test_split_refuses_a_single_class_side(demo):
    frame = pd.DataFrame(
        {
            "customer_id": range(10),
            "event_timestamp": pd.date_range("2026-01-01", periods=10, freq="D", tz="UTC"),
            "churned": [0, 1, 0, 1, 0, 1, 0, 0, 0, 0],
        }
    )
    with pytest.raises(DataValidationError, match="holdout side has 1 class"):
        split_holdout(frame, SCHEMA, SplitPolicy(holdout_fraction=0.3))


@pytest.fixture
def feast_copy(demo, tmp_path) -> FeastFeatureStore:
    """A copy of the demo's feature repo, its registry and its offline sources, to change."""
    import shutil

    from driftloop.core.settings import get_settings

    state = get_settings().home / "feast"
    shutil.copytree(FeastFeatureStore.load_named(demo.feast_block).repo_path,
                    tmp_path / "feature_repo")  # fmt: skip
    shutil.copytree(state, tmp_path / ".driftloop" / "feast", ignore=shutil.ignore_patterns(
        "online_store.db"))  # fmt: skip
    return FeastFeatureStore(repo_path=str(tmp_path / "feature_repo"))


def test_unchanged_feast_definitions_are_read_from_the_cache(feast_copy):
    """A rerun does not load Feast while its registry file is unchanged; the data of the file
    sources is fingerprinted every time; a changed registry is read again."""
    from tasks.resolve_features import read_feature_definitions

    first = read_feature_definitions(feast_copy, SERVICE, return_state=True)
    assert first.is_completed() and first.name == "Completed", first
    again = read_feature_definitions(feast_copy, SERVICE, return_state=True)
    assert again.name == "Cached", again
    other = read_feature_definitions(
        feast_copy, FeatureSelection(features=["customer_profile:plan"]), return_state=True
    )
    assert other.name == "Completed", other  # another selection is another key
    before = resolve_features(feast_copy, SERVICE)

    # New offline data, same definitions: the definitions come from the cache, the
    # fingerprint changes.
    (source,) = [s for s in first.result().source_files if "customer_profile" in s]
    assert Path(source).is_relative_to(Path(feast_copy.repo_path).parent), source  # the copy
    frame = pd.read_parquet(source)
    frame.iloc[:-1].to_parquet(source)
    assert read_feature_definitions(feast_copy, SERVICE, return_state=True).name == "Cached"
    after = resolve_features(feast_copy, SERVICE)
    assert after.fingerprint != before.fingerprint
    assert after.columns == before.columns

    # A changed registry (feast apply, materialization) is read from Feast again.
    registry = feast_copy.local_registry()
    assert registry is not None and registry.is_file()
    store = feast_copy.store()
    view = store.get_feature_view("customer_profile")
    view.description = "changed by the test"
    store.apply([view])
    assert read_feature_definitions(feast_copy, SERVICE, return_state=True).name == "Completed"


@pytest.mark.parametrize(
    ("registry", "local"),
    [
        ("../state/registry.db", True),
        ({"registry_type": "file", "path": "data/registry.db"}, True),
        ({"registry_type": "sql", "path": "postgresql://db/feast"}, False),
        ("s3://bucket/registry.pb", False),
    ],
)
def test_only_a_local_registry_file_is_cached_on(tmp_path, registry, local):
    import yaml

    (tmp_path / "feature_store.yaml").write_text(yaml.safe_dump({"registry": registry}))
    found = FeastFeatureStore(repo_path=str(tmp_path)).local_registry()
    assert (found is not None) == local, found


def test_the_training_code_fingerprint_reads_the_source_without_importing_it():
    import hashlib
    import importlib
    import inspect
    import subprocess
    import sys

    from tasks.plan_training import TRAINING_CODE, code_fingerprint

    # In a fresh process: none of the training code is imported by it.
    probe = (
        "import sys\nfrom tasks.plan_training import TRAINING_CODE, code_fingerprint\n"
        "code_fingerprint()\n"
        "print(sorted(m for m in TRAINING_CODE if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    # The same value as hashing the imported modules' source (so an upgrade retrains nothing).
    digest = hashlib.md5()
    for name in TRAINING_CODE:
        digest.update(inspect.getsource(importlib.import_module(name)).encode())
    assert code_fingerprint() == digest.hexdigest()
    with pytest.raises(ModuleNotFoundError, match=r"tasks\.no_such_step"):
        code_fingerprint(("tasks.no_such_step",))
