"""Helpers shared by the tests: real servers, registries, blocks and Prefect API queries."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.settings import TELEMETRY_OFF
from driftloop.supervisor import Service, Supervisor

PYTHON = sys.executable


class PrefectServer:
    """`prefect server start` on a loopback port, stopped cleanly by the test."""

    def __init__(self, port: int, home: Path, log_dir: Path):
        self.port = port
        self.home = home
        self.supervisor = Supervisor(log_dir.parent / "run-tests", log=lambda _: None)
        self.service = Service(
            name="prefect-server",
            argv=[PYTHON, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                  "--port", str(port)],
            env={**os.environ, **TELEMETRY_OFF, "PREFECT_HOME": str(home)},
            log_file=log_dir / "prefect-server.log",
            health_url=f"http://127.0.0.1:{port}/api/health",
            port=port,
        )  # fmt: skip

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        self.supervisor.start(self.service)
        self.supervisor.wait_healthy(self.service, 120)

    def stop(self) -> None:
        self.supervisor.stop_all()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class MlflowSetup:
    """An MLflow tracking store on SQLite in a temporary folder, saved as a block."""

    block_name: str
    block: Any  # blocks.mlflow.MlflowTracking

    @property
    def model_name(self) -> str:
        return self.block.registered_model_name

    def client(self):
        return self.block.activate()

    def champion(self) -> str | None:
        from driftloop import names
        from tasks.register_model import alias_version

        return alias_version(self.client(), self.model_name, names.ALIAS_CHAMPION)

    def versions(self) -> list[Any]:
        from mlflow.exceptions import MlflowException

        try:
            return list(self.client().search_model_versions(f"name='{self.model_name}'"))
        except MlflowException:
            return []


def make_mlflow(folder: Path, model_name: str | None = None) -> MlflowSetup:
    from blocks.mlflow import MlflowTracking

    folder.mkdir(parents=True, exist_ok=True)
    block = MlflowTracking(
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        artifact_location=str(folder / "artifacts"),
        experiment_name=unique("exp"),
        registered_model_name=model_name or unique("model"),
    )
    name = unique("mlflow")
    block.save(name)
    return MlflowSetup(block_name=name, block=block)


def task_states(flow_run_id: Any) -> dict[str, list[str]]:
    """Task name -> state names of that task's runs in a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    states: dict[str, list[str]] = {}
    for run in runs:
        # Task run names are "<task name>-<3 hex>"; tests speak of the task name.
        name = run.name.rsplit("-", 1)[0]
        states.setdefault(name, []).append(run.state.name if run.state else "?")
    return states


def events(
    prefix: str, resource_id: str | None = None, at_least: int = 1, timeout: float = 20.0
) -> list[Any]:
    """Events named ``prefix*`` (about ``resource_id``) from the Prefect API, newest first.

    Events reach the server asynchronously; wait until ``at_least`` of them arrived (or the
    timeout passed, returning what there is).
    """
    import time

    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=5)
    deadline = time.monotonic() + timeout
    while True:
        found = _events(prefix, resource_id)
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _events(prefix: str, resource_id: str | None) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventResourceFilter,
    )

    event_filter = EventFilter(event=EventNameFilter(prefix=[prefix]))
    if resource_id:
        event_filter.resource = EventResourceFilter(id=[resource_id])
    with get_client(sync_client=True) as client:
        response = client.request(
            "POST", "/events/filter", json={"filter": event_filter.model_dump(mode="json"),
                                            "limit": 50}
        )  # fmt: skip
    from prefect.events.schemas.events import ReceivedEvent

    return [ReceivedEvent.model_validate(e) for e in response.json()["events"]]


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Swallow the narration Feast and DVC print on stdout during set-up."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        yield


def retries_used(state: Any) -> int:
    """How many times the task run behind a final state was retried (run_count - 1)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_task_run(state.state_details.task_run_id)
    return run.run_count - 1
