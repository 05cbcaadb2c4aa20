"""driftloop's worker on a real Prefect server: woken by the pool's Scheduled events (its poll
is set to 60 s here, so only the event can explain a quick pick-up), one interpreter per run
(the engine's parent is the worker itself), and a killed run process recorded Crashed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftloop.app.worker import engine_command, is_pool_scheduled_event
from driftloop.core.settings import PROJECT_ROOT
from tests.helpers import unique


def test_the_private_prefect_apis_the_worker_uses_still_exist():
    """Fails loudly after a Prefect upgrade that moved them (driftloop/app/_prefect_runner.py)."""
    import inspect

    from driftloop.app import _prefect_runner

    parameters = inspect.signature(_prefect_runner.EngineCommandStarter.__init__).parameters
    missing = [p for p in _prefect_runner.STARTER_PARAMETERS if p not in parameters]
    assert not missing, f"EngineCommandStarter lost {missing}: update _prefect_runner.py"
    assert hasattr(_prefect_runner.FlowRunExecutorContext, "create_executor")
    # Set when the context is entered: read from its source, as entering needs a running loop.
    assert "self.control_channel" in inspect.getsource(_prefect_runner.FlowRunExecutorContext)


def test_the_engine_runs_on_the_workers_own_interpreter():
    assert engine_command("python -m prefect.engine") == f"{sys.executable} -m prefect.engine"
    assert engine_command("/opt/py -m prefect.engine") == "/opt/py -m prefect.engine"
    assert engine_command(None) is None
    assert is_pool_scheduled_event("prefect.flow-run.Scheduled")
    assert not is_pool_scheduled_event("prefect.flow-run.Running")


@pytest.fixture
def pool_and_worker(prefect_server, tmp_path: Path):
    """A work pool made as `driftloop up` makes it, and `driftloop worker` serving it."""
    from driftloop.app.bootstrap import ensure_work_pool

    pool = unique("pool")
    ensure_work_pool(pool)
    log = tmp_path / "worker.log"
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "60", "PREFECT_LOGGING_LEVEL": "INFO"}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "driftloop.app.worker", "--pool", pool],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while "Woken by ('prefect.flow-run.Scheduled'" not in log.read_text():
        assert worker.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield pool, log
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _deploy(pool: str, entrypoint: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(entrypoint)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(flow)
        return str(
            client.create_deployment(
                flow_id=flow_id, name=unique("dep"), entrypoint=entrypoint,
                path=str(PROJECT_ROOT), work_pool_name=pool,
            )
        )  # fmt: skip


def _wait_final(flow_run_id, timeout: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"still {run.state} after {timeout}s"
            time.sleep(0.5)


def test_a_run_is_picked_up_on_its_event_in_one_interpreter(pool_and_worker):
    from prefect.client.orchestration import get_client

    pool, log = pool_and_worker
    deployment_id = _deploy(pool, "tests.worker_flows.parent_of_engine")
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    run = _wait_final(flow_run.id)
    assert run.state.is_completed(), run.state
    assert f"Picked up flow run {flow_run.id} on its event" in log.read_text()
    parent = run.state.result()
    assert "driftloop.app.worker" in parent, parent  # no workspace supervisor in between
    assert "_workspace_supervisor" not in parent


def test_a_run_outlives_its_worker(pool_and_worker, tmp_path: Path):
    """The engine has a session of its own: SIGKILL of the worker (and of its process group,
    as a terminal's Ctrl-C or the service's clean-up would reach it) leaves the run running,
    and it completes."""
    import psutil
    from prefect.client.orchestration import get_client

    pool, _ = pool_and_worker
    deployment_id = _deploy(pool, "tests.worker_flows.sleeper")
    pid_file = tmp_path / "pid"
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"pid_file": str(pid_file), "seconds": 6.0}
        )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    engine = psutil.Process(int(pid_file.read_text()))
    worker = engine.parent()
    assert "driftloop.app.worker" in " ".join(worker.cmdline())
    assert os.getsid(engine.pid) != os.getsid(worker.pid)
    os.killpg(os.getpgid(worker.pid), signal.SIGKILL)
    run = _wait_final(flow_run.id)
    assert run.state.is_completed(), run.state


def test_a_killed_run_process_is_recorded_crashed(pool_and_worker, tmp_path: Path):
    from prefect.client.orchestration import get_client

    pool, _ = pool_and_worker
    deployment_id = _deploy(pool, "tests.worker_flows.sleeper")
    pid_file = tmp_path / "pid"
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"pid_file": str(pid_file)}
        )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    run = _wait_final(flow_run.id)
    assert run.state.is_crashed(), run.state
