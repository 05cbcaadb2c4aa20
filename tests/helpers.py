"""Helpers shared by the tests: real servers, registries, blocks and Prefect API queries."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.app._prefect_server import server_argv
from driftloop.app.supervisor import Component, Supervisor
from driftloop.core.settings import TELEMETRY_OFF

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.filters import EventFilter
    from prefect.events.schemas.events import ReceivedEvent


class PrefectServer:
    """driftloop's Prefect server (`prefect server start`, its SQLite writes begun IMMEDIATE)
    on a loopback port, stopped cleanly by the test."""

    def __init__(self, port: int, home: Path, log_dir: Path):
        self.port = port
        self.home = home
        self.supervisor = Supervisor(
            log_dir.parent / "run-tests", service_id=unique("tests"), log=lambda _: None
        )
        self.service = Component(
            name="prefect-server",
            argv=server_argv("127.0.0.1", port),  # the service's own server command
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
        from tasks.registry import find_champion

        champion = find_champion(self.block)
        return champion.version if champion else None

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


def task_states(
    flow_run_id: Any, expect: Iterable[str] = (), timeout: float = 30.0
) -> dict[str, list[str]]:
    """Task name -> state names of that task's runs in a flow run.

    Prefect records task runs from the events their processes send (the flow's, and each Ray
    worker's), a moment after the flow has returned. With `expect`, wait (up to `timeout`)
    until each of those tasks has a run and no run of them is still Pending or Running; then
    return what there is (the caller's assertion says what is missing).
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    wanted = set(expect)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            states: dict[str, list[str]] = {}
            for run in runs:
                # Task run names are "<task name>-<3 hex>"; tests speak of the task name.
                name = run.name.rsplit("-", 1)[0]
                states.setdefault(name, []).append(run.state.name if run.state else "?")
            settled = wanted <= set(states) and not any(
                s in ("Pending", "Running", "?") for name in wanted for s in states[name]
            )
            if settled or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


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


def _events(prefix: str, resource_id: str | None) -> list[ReceivedEvent]:
    """One page (the newest 50) of the events: `events` polls until enough arrived."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(event=EventNameFilter(prefix=[prefix]))
    if resource_id:
        event_filter.resource = EventResourceFilter(id=[resource_id])
    with get_client(sync_client=True) as client:
        return list(client.read_events(filter=event_filter, limit=50).events)


def read_all_events(
    client: SyncPrefectClient, event_filter: EventFilter, page_size: int = 50
) -> list[ReceivedEvent]:
    """Every event ``event_filter`` matches (newest first unless it says otherwise), through
    ``client`` (a `SyncPrefectClient`), following the API's pages of ``page_size`` events.

    `read_events` returns one page and the link to the next; `get_next_page_sync` reads it
    (`read_events_page`) and returns None after the last.
    """
    page = client.read_events(filter=event_filter, limit=page_size)
    found: list[ReceivedEvent] = []
    while page is not None:
        found += page.events
        page = page.get_next_page_sync(client)
    return found


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


class RayNodes:
    """A real Ray cluster on this machine: `ray start --head`, then worker nodes.

    Each node runs in its own session, so a test can kill one node outright and stop
    the rest cleanly (never `ray stop`, which would stop every Ray on the machine).
    """

    def __init__(self, temp_dir: Path, log_dir: Path):
        self.temp_dir = temp_dir
        self.log_dir = log_dir
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: Callable[[], list[str]], attempts: int = 3) -> int:
        """`ray start` for one node. On a busy machine (the suite's other worker training
        beside it) `ray start` can give up after 30 s waiting for its own raylet ("The
        current node timed out during startup"), as `up`'s supervisor sees too: what the
        attempt left is stopped and the node started again, with fresh ports."""
        from driftloop.app.supervisor import stop_session

        env = {**os.environ, **TELEMETRY_OFF, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        failures = []
        for attempt in range(1, attempts + 1):
            log_file = self.log_dir / f"ray-{name}-{attempt}.log"
            with log_file.open("wb") as log:
                process = subprocess.Popen(
                    [str(Path(sys.executable).parent / "ray"), "start", *args(),
                     "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            if process.wait(timeout=120) == 0:
                self.nodes[name] = process
                return process.pid
            stop_session(process.pid, 1, 5, f"failed ray {name}", lambda _: None)
            failures.append(f"attempt {attempt}:\n{log_file.read_text()[-3000:]}")
        raise RuntimeError(f"ray start ({name}) failed {attempts} times:\n" + "\n".join(failures))

    def start_head(self, num_cpus: int = 1) -> str:
        from tests.conftest import free_port as free

        def args() -> list[str]:
            self.port = free()
            return ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus),
                    "--temp-dir", str(self.temp_dir), "--include-dashboard", "false",
                    "--ray-client-server-port", str(free()),
                    "--dashboard-agent-listen-port", str(free())]  # fmt: skip

        self._start("head", args)
        return self.address

    def add_worker(self, name: str = "worker", num_cpus: int = 1) -> int:
        from tests.conftest import free_port

        def args() -> list[str]:
            return ["--address", self.address, "--num-cpus", str(num_cpus),
                    "--dashboard-agent-listen-port", str(free_port())]  # fmt: skip

        return self._start(name, args)

    def processes(self, name: str) -> list[int]:
        from driftloop.app.supervisor import session_members

        return session_members(self.nodes[name].pid)

    def kill(self, name: str) -> None:
        """Kill every process of a node at once, as a machine failure would."""
        import signal

        for pid in self.processes(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            self.stop_node(name)

    def stop_node(self, name: str) -> None:
        """SIGTERM the node's processes; whatever is still there after 5 s is killed."""
        from driftloop.app.supervisor import stop_session

        process = self.nodes.pop(name)
        stop_session(process.pid, 1, 5, f"ray {name}", lambda _: None)


def run_training_subprocess(kwargs: dict[str, Any], env: dict[str, str], timeout: float = 600):
    """Run the training flow in a fresh process (as a worker would) and return its result."""
    import json

    from driftloop.core.settings import PROJECT_ROOT

    done = subprocess.run(
        [sys.executable, "-m", "tests.run_training", json.dumps(kwargs)],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(
            f"training subprocess failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])
