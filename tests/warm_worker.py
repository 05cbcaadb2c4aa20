"""driftloop's worker as the tests start it (`start_worker` in conftest), and the helpers of
the tests that run deployments on it: deploy a flow to its pool, run it, wait for its end,
read what its log says about warm engines."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from driftloop.core.settings import PROJECT_ROOT
from tests.helpers import unique

WARM_STARTED = re.compile(r"Warm engine (\d+) started")


def warm_engines_started(log: Path) -> list[int]:
    return [int(pid) for pid in WARM_STARTED.findall(log.read_text())]


def forked(log: Path, flow_run_id: object) -> tuple[int, int] | None:
    """(warm engine, run process) if the worker says it forked the run from its warm engine."""
    found = re.search(
        rf"Flow run {flow_run_id} starts in warm engine (\d+) as process (\d+)", log.read_text()
    )
    return (int(found.group(1)), int(found.group(2))) if found else None


def wait_for_log(log: Path, pattern: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{log.read_text()}"
        time.sleep(0.2)


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def deploy(
    pool: str, entrypoint: str, job_variables: dict | None = None, warm_log: Path | None = None
) -> str:
    """A deployment on the pool. With `warm_log` (the worker's log), return once the worker
    has a warm engine that imports the deployment's module: until the worker has seen the
    deployment, its idle engine is recycled for it, and a run arriving meanwhile starts cold
    ("no warm engine is ready yet"), which the tests of the warm path must not race."""
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(entrypoint)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(flow)
        deployment_id = str(
            client.create_deployment(
                flow_id=flow_id, name=unique("dep"), entrypoint=entrypoint,
                path=str(PROJECT_ROOT), work_pool_name=pool, job_variables=job_variables,
            )
        )  # fmt: skip
    if warm_log is not None:
        module = re.escape(entrypoint.rsplit(".", 1)[0])
        pattern = rf"Warm engine \d+ started \(pre-imports [^)]*\b{module}\b"
        deadline = time.monotonic() + 60
        while not re.search(pattern, warm_log.read_text()):
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{warm_log.read_text()}"
            time.sleep(0.2)
    return deployment_id


def run_and_wait(deployment_id: str, **parameters):
    """Run the deployment and wait for its end."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    return wait_final(flow_run.id)


def wait_final(flow_run_id, timeout: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"still {run.state} after {timeout}s"
            time.sleep(0.5)
