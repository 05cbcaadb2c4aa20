"""`make up-server` as a user runs it: the same service on PostgreSQL-backed Prefect and MLflow
and a Redis online store, started by `driftloop up` as supervised components on loopback
(PostgreSQL and Redis are Debian's, installed by `make test`). One shared stack; the tests
build on each other in file order:

1. The state is where the profile says: Prefect's and MLflow's in PostgreSQL, Feast's online
   features in Redis, no SQLite database anywhere.
2. New data closes the loop while PostgreSQL, Redis and the worker are killed during the
   training, one after the other (tests/scenarios.py, as on the embedded profile).
3. The event storm, Ctrl-C and `make up` again lose no revision; the server's health endpoint
   answers throughout the storm, nothing says "database is locked", and no run is left
   Pending or Running.
"""

from __future__ import annotations

import threading
import time

import pytest

from driftloop.app import server_profile
from tests.scenarios import (
    new_data_closes_the_loop_while_components_die,
    storm_then_ctrl_c_then_up_loses_no_revision,
)
from tests.stack import Stack

pytestmark = pytest.mark.slow


def _query(stack: Stack, database: str, sql: str) -> list[tuple]:
    import psycopg2

    port = int(stack.env["DRIFTLOOP_POSTGRES_PORT"])
    connection = psycopg2.connect(
        host="127.0.0.1", port=port, user=server_profile.POSTGRES_USER, dbname=database
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    finally:
        connection.close()


def test_the_state_lives_in_postgresql_and_redis(server_stack: Stack):
    """After the first training and its scoring: flow runs in Prefect's PostgreSQL database,
    the champion in MLflow's, the materialized features in Redis; no SQLite database."""
    import redis

    from tests.stack import SCORING, by_automation

    stack = server_stack
    port = stack.env["DRIFTLOOP_POSTGRES_PORT"]
    output = "\n".join(stack.up.lines)
    assert "Starting driftloop, server profile" in output
    assert f"Prefect's database: postgresql+asyncpg://driftloop@127.0.0.1:{port}/prefect" in output
    assert f"MLflow's backend store: postgresql://driftloop@127.0.0.1:{port}/mlflow" in output

    runs = _query(stack, "prefect", "SELECT count(*) FROM flow_run WHERE state_type='COMPLETED'")
    assert runs[0][0] >= 1
    (champion,) = _query(
        stack,
        "mlflow",
        "SELECT version FROM registered_model_aliases "
        "WHERE name = 'churn-model' AND alias = 'champion'",
    )
    assert champion == (1,)
    # The promotion's scoring read the champion's features from the online store: Redis.
    scoring = stack.wait_for_run(SCORING, by_automation, timeout=240)
    assert scoring["state_type"] == "COMPLETED", scoring["state"]
    online = redis.Redis(host="127.0.0.1", port=int(stack.env["DRIFTLOOP_REDIS_PORT"]))
    assert online.dbsize() > 0
    for sqlite in ("prefect/prefect.db", "mlflow/mlflow.db", "feast/online_store.db"):
        assert not (stack.home / sqlite).exists(), sqlite  # the embedded profile's databases


def test_new_data_closes_the_loop_even_when_the_databases_die(server_stack: Stack):
    """PostgreSQL (under the Prefect server and MLflow, which ride through its restart),
    Redis and the worker are each killed during a training and restarted; the training
    completes and is promoted, scoring follows. (Killing the servers themselves is the
    embedded profile's test: their restart does not depend on the profile.)"""
    new_data_closes_the_loop_while_components_die(
        server_stack, (server_profile.POSTGRES, server_profile.REDIS, "prefect-worker")
    )


class HealthProbe:
    """GET /api/health every half second in a thread: (time.monotonic(), status, seconds)."""

    def __init__(self, url: str):
        self.url = url
        self.probes: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(0.5):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    status = response.status
            except Exception:
                status = 0  # refused, timed out or an error status
            self.probes.append((started, status, time.monotonic() - started))


def test_a_storm_on_postgresql_loses_no_revision_and_never_locks(server_stack: Stack):
    """The storm of tests/scenarios.py on the server profile. Until the Ctrl-C, every health
    probe of the Prefect server is answered (200, within its 5 s timeout); its log never
    says "database is locked"; afterwards no flow run stays Pending or Running."""
    stack = server_stack
    with HealthProbe(f"{stack.prefect_url}/api/health") as probe:
        ctrl_c_at = storm_then_ctrl_c_then_up_loses_no_revision(stack)
    during = [p for p in probe.probes if p[0] < ctrl_c_at - 1]
    assert len(during) > 20, during
    failed = [p for p in during if p[1] != 200]
    slowest = max(seconds for _, _, seconds in during)
    print(f"health probes during the storm: {len(during)}, slowest {slowest:.3f}s")
    assert not failed, failed
    log = (stack.home / "logs" / "prefect-server.log").read_text(errors="replace")
    assert "database is locked" not in log

    deadline = time.monotonic() + 600
    while True:
        body = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}}}
        busy = stack.api("POST", "/flow_runs/filter", json=body)
        if not busy:
            break
        assert time.monotonic() < deadline, [(r["name"], r["state_name"]) for r in busy]
        time.sleep(5)


def test_driftloop_setup_against_the_running_server_changes_nothing(server_stack: Stack):
    """`driftloop setup` (compose's one-shot service) on a server that is set up already:
    it keeps every block document, and deploying again starts no run."""
    import subprocess
    import sys

    from driftloop.core.settings import PROJECT_ROOT
    from tests.stack import TRAINING

    stack = server_stack
    before = {r["id"] for r in stack.flow_runs(TRAINING)}
    champion = stack.champion()
    env = {**stack.env, "PREFECT_API_URL": f"{stack.prefect_url}/api",
           "DRIFTLOOP_MLFLOW_TRACKING_URI": "http://mlflow.elsewhere:5000"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "driftloop.app.cli", "setup"], env=env, cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deployed prefect.yaml" in done.stdout
    assert "created block" not in done.stdout  # the user's (here: `up`'s) documents are kept
    assert "prepared demo" not in done.stdout  # the demo's state is reused
    (mlflow,) = [
        b for b in stack.api("POST", "/block_documents/filter", json={})
        if b["block_type"]["slug"] == "driftloop-mlflow" and b["name"] == "default"
    ]  # fmt: skip
    assert mlflow["data"]["tracking_uri"] == stack.mlflow_url
    time.sleep(5)
    assert {r["id"] for r in stack.flow_runs(TRAINING)} == before
    assert stack.champion() == champion
