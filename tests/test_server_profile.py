"""The server profile's parts (driftloop/app/server_profile.py): which databases `up` starts
for which settings, the URLs it hands to each component, and a real PostgreSQL and Redis
(Debian's, installed by `make test`) started, checked and stopped by the supervisor. The
whole service on this profile is tests/test_stack_server.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks import FeastFeatureStore
from blocks.prediction_log import SqlPredictionLog
from driftloop.app import server_profile
from driftloop.app.server_profile import Databases, redacted
from driftloop.app.stack import _components, stack_env
from driftloop.app.supervisor import Supervisor, session_alive
from driftloop.core.errors import BlockConfigurationError
from driftloop.core.settings import PROJECT_ROOT, DriftloopSettings
from tests.conftest import free_port

GIVEN_PREFECT = "postgresql+asyncpg://prefect:s3cret@db.internal:5432/prefect"
GIVEN_MLFLOW = "postgresql://mlflow:s3cret@db.internal:5432/mlflow"


def server_settings(tmp_path: Path, **values) -> DriftloopSettings:
    return DriftloopSettings(home=tmp_path / ".driftloop", profile="server", **values)


def test_a_url_is_shown_without_its_password():
    assert redacted(GIVEN_PREFECT) == "postgresql+asyncpg://prefect:***@db.internal:5432/prefect"
    assert "s3cret" not in redacted("not a url s3cret://x")


def test_with_no_urls_up_starts_postgresql_and_redis_for_everything(tmp_path: Path):
    settings = server_settings(tmp_path)
    dbs = Databases.of(settings, {})
    assert (dbs.local_postgres, dbs.local_redis) == (True, True)
    assert dbs.prefect_url == "postgresql+asyncpg://driftloop@127.0.0.1:5442/prefect"
    assert dbs.mlflow_url == "postgresql://driftloop@127.0.0.1:5442/mlflow"
    # ... and the serving application's prediction log goes to that PostgreSQL too.
    assert dbs.local_databases == ("prefect", "mlflow", "served")
    assert dbs.prediction_log_url == "postgresql://driftloop@127.0.0.1:5442/served"


@pytest.mark.parametrize("prefect_setting", server_profile.PREFECT_DATABASE_SETTINGS)
def test_urls_given_through_each_components_own_setting_win(tmp_path: Path, prefect_setting):
    settings = server_settings(tmp_path, feast_redis="cache.internal:6379,password=s3cret")
    env = {prefect_setting: GIVEN_PREFECT, "MLFLOW_BACKEND_STORE_URI": GIVEN_MLFLOW}
    dbs = Databases.of(settings, env)
    assert (dbs.prefect_url, dbs.mlflow_url) == (GIVEN_PREFECT, GIVEN_MLFLOW)
    assert (dbs.local_postgres, dbs.local_redis) == (False, False)
    # No local PostgreSQL is started for the prediction log alone: parquet files, unless given.
    assert dbs.prediction_log_url is None
    components = _components(settings, stack_env(settings) | env)
    assert server_profile.POSTGRES not in components and server_profile.REDIS not in components
    # Only MLflow gets MLflow's store, through its environment, never on its command line.
    mlflow = components["mlflow-server"]
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == GIVEN_MLFLOW
    assert not any("s3cret" in arg for arg in mlflow.argv)
    prefect = components["prefect-server"]
    assert prefect.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == GIVEN_PREFECT
    # Every process that opens the feature store expands this in feature_store.server.yaml.
    assert stack_env(settings)["DRIFTLOOP_FEAST_REDIS"] == "cache.internal:6379,password=s3cret"


def test_only_the_database_not_given_is_created_locally(tmp_path: Path):
    settings = server_settings(tmp_path)
    dbs = Databases.of(settings, {"MLFLOW_BACKEND_STORE_URI": GIVEN_MLFLOW})
    assert dbs.local_postgres
    assert dbs.local_databases == ("prefect", "served")
    given = server_settings(tmp_path, prediction_log_url=GIVEN_MLFLOW.replace("mlflow", "served"))
    dbs = Databases.of(given, {"MLFLOW_BACKEND_STORE_URI": GIVEN_MLFLOW})
    assert dbs.local_databases == ("prefect",)
    assert dbs.prediction_log_url == "postgresql://served:s3cret@db.internal:5432/served"


def test_the_embedded_profile_ignores_database_urls_in_the_callers_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", GIVEN_PREFECT)
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", GIVEN_MLFLOW)
    settings = DriftloopSettings(home=tmp_path / ".driftloop")
    env = stack_env(settings)
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env
    assert "MLFLOW_BACKEND_STORE_URI" not in env
    components = _components(settings, env)
    assert server_profile.POSTGRES not in components
    assert settings.mlflow_backend_uri in components["mlflow-server"].argv


def test_each_profile_names_its_feast_configuration():
    assert DriftloopSettings().feast_config_file == "feature_store.yaml"
    server = DriftloopSettings(profile="server")
    assert server.feast_config_file == "feature_store.server.yaml"
    assert (PROJECT_ROOT / "feature_repo" / server.feast_config_file).is_file()


def test_a_feast_configuration_with_an_unset_variable_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DRIFTLOOP_FEAST_REDIS", raising=False)
    block = FeastFeatureStore(
        repo_path=str(PROJECT_ROOT / "feature_repo"), config_file="feature_store.server.yaml"
    )
    with pytest.raises(BlockConfigurationError, match="DRIFTLOOP_FEAST_REDIS"):
        block.check("driftloop-feast/default")
    monkeypatch.setenv("DRIFTLOOP_FEAST_REDIS", "127.0.0.1:6390")
    block.check("driftloop-feast/default")
    assert block.store().config.online_store.connection_string == "127.0.0.1:6390"


def test_postgresql_and_redis_start_serve_and_stop_cleanly_under_the_supervisor(tmp_path: Path):
    """Debian's servers, as `up` runs them: PostgreSQL initialised once (also as root, in a
    user namespace), its databases created once; both healthy; a stop is a clean shutdown,
    so the next start needs no recovery."""
    import psycopg2
    import redis

    settings = server_settings(tmp_path, postgres_port=free_port(), redis_port=free_port())
    env = stack_env(settings)
    started: list[int] = []
    at = datetime.now(UTC)
    logged = [
        {"served_at": at, "request_id": "r", "model": "m", "version": "1", "role": "champion",
         "mode": "entity", "customer_id": i, "tenure": float("nan") if i == 0 else 3.0,
         "plan": plan, "score": 0.25, "imputed": "tenure" if i == 0 else ""}
        for i, plan in enumerate(("basic", "pro"))
    ]  # fmt: skip
    for attempt in (1, 2):
        supervisor = Supervisor(settings.run_dir, service_id=f"test-{attempt}", log=print)
        server_profile.ensure_cluster(settings)
        postgres = supervisor.start(server_profile.postgres(settings, env))
        cache = supervisor.start(server_profile.redis(settings, env))
        started += [postgres.pid, cache.pid]  # each leads a session of its own
        try:
            supervisor.wait_healthy(postgres, 60)
            supervisor.wait_healthy(cache, 60)
            created = server_profile.ensure_databases(settings, ("prefect", "mlflow", "served"))
            assert created == (["prefect", "mlflow", "served"] if attempt == 1 else [])
            # The prediction log's table on a real PostgreSQL: written, and read back after
            # a restart.
            served = SqlPredictionLog(server_profile.local_postgres_url(settings, "served"))
            if attempt == 1:
                served.write("m", logged)
            window = served.read("m", logged[0]["served_at"], logged[0]["served_at"])
            assert window is not None and len(window) == 2
            window = window.sort_values("customer_id")
            assert window["tenure"].isna().tolist() == [True, False]
            assert list(window["plan"]) == ["basic", "pro"]
            served.engine.dispose()
            with psycopg2.connect(
                host=settings.host, port=settings.postgres_port, dbname="mlflow",
                user=server_profile.POSTGRES_USER,
            ) as connection:  # fmt: skip
                assert connection.server_version >= 150000
            online = redis.Redis(host=settings.host, port=settings.redis_port)
            if attempt == 1:
                online.set("kept", "yes")
            else:
                assert online.get("kept") == b"yes"  # saved when it was stopped
        finally:
            supervisor.stop_all()
    log = (settings.logs_dir / "postgres.log").read_text()
    assert log.count("database system is shut down") == 2, log
    assert "automatic recovery" not in log and "not properly shut down" not in log, log
    assert not [pid for pid in started if session_alive(pid)]
