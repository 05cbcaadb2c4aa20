"""`driftloop up`: the embedded stack in the foreground, and `driftloop down`.

Prefect server (SQLite) + MLflow server (SQLite, local artifacts)
  -> block types and default documents -> demo data registry and feature repo
  -> `prefect deploy --all` (prefect.yaml) -> a process worker on the work pool
  -> first training run through the server -> serve until SIGINT/SIGTERM
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from driftloop import names
from driftloop.settings import PROJECT_ROOT, DriftloopSettings
from driftloop.supervisor import Service, StartupError, Supervisor, stop_from_pid_files, tail

Log = Callable[[str], None]


def stack_env(settings: DriftloopSettings) -> dict[str, str]:
    """The environment of every process of the embedded stack.

    `up` is the embedded stack by definition: the Prefect API, home and result storage are
    forced to the local server and the state folder even if the caller's shell says otherwise.
    """
    env = settings.process_env()
    env["PREFECT_API_URL"] = settings.prefect_api_url
    env["PREFECT_UI_URL"] = settings.prefect_ui_url
    env["PREFECT_HOME"] = str(settings.prefect_home)
    env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(settings.results_dir)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    # An event should start its flow run within a few seconds: the worker asks for due runs
    # every second instead of every 10 (load on an idle local server is negligible).
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
    return env


def _services(settings: DriftloopSettings, env: dict[str, str]) -> dict[str, Service]:
    python = sys.executable
    logs = settings.logs_dir
    return {
        "prefect-server": Service(
            name="prefect-server",
            argv=[
                python,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                settings.host,
                "--port",
                str(settings.prefect_port),
            ],
            env=env,
            log_file=logs / "prefect-server.log",
            health_url=f"{settings.prefect_api_url}/health",
            port=settings.prefect_port,
        ),
        "mlflow-server": Service(
            name="mlflow-server",
            argv=[
                python,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                settings.mlflow_backend_uri,
                "--artifacts-destination",
                str(settings.mlflow_artifacts_dir),
                "--host",
                settings.host,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
            ],
            env=env,
            log_file=logs / "mlflow-server.log",
            health_url=f"{settings.mlflow_url}/health",
            port=settings.mlflow_port,
        ),
        "prefect-worker": Service(
            name="prefect-worker",
            argv=[
                python,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                names.WORK_POOL,
                "--type",
                "process",
            ],
            env=env,
            log_file=logs / "prefect-worker.log",
            term_signals=2,
            cwd=PROJECT_ROOT,
        ),
    }


def deploy_all(settings: DriftloopSettings, env: dict[str, str]) -> None:
    """`prefect deploy --all` from the checkout: the same prefect.yaml a user deploys."""
    log_file = settings.logs_dir / "deploy.log"
    with log_file.open("wb") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise StartupError(
            f"prefect deploy --all failed (exit {done.returncode}). Last lines of {log_file}:\n"
            f"{tail(log_file)}"
        )


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    with (
        path.open("a") as handle,
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _has_champion() -> bool:
    from blocks.mlflow import MlflowTracking
    from tasks.register_model import alias_version

    config = MlflowTracking.load_named(names.DEFAULT_BLOCK)
    client = config.activate()
    return alias_version(client, config.registered_model_name, names.ALIAS_CHAMPION) is not None


class _TrainingWatch:
    """Follows the first training run and reports how it ended."""

    def __init__(self, flow_run_id, ui_url: str, worker_log: str, log: Log):
        self.flow_run_id = flow_run_id
        self.ui_url = ui_url
        self.worker_log = worker_log
        self.log = log
        self.done = False

    def poll(self) -> None:
        if self.done:
            return
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(self.flow_run_id)
        if run.state is None or not run.state.is_final():
            return
        self.done = True
        url = f"{self.ui_url}/runs/flow-run/{self.flow_run_id}"
        if run.state.is_completed():
            self.log(f"Training run {run.name!r} completed: {url}")
        else:
            self.log(
                f"Training run {run.name!r} ended {run.state.name}: {url}\n"
                f"  (worker log: {self.worker_log})"
            )


def _claim_initial_revision(revision) -> None:
    """The first training (below) covers the demo's initial data: record its revision as seen,
    so the new-data check does not announce it and start a second training on the same data."""
    from blocks.dvc import DvcDataset
    from driftloop.dataset_events import claim_revision

    dataset = DvcDataset.load_named(names.DEFAULT_BLOCK)
    claim_revision(dataset.name, revision.md5, revision.commit, by="driftloop up (initial data)")


def up(settings: DriftloopSettings, *, with_demo: bool = True, log: Log = print) -> int:
    """Run the embedded stack in the foreground until SIGINT or SIGTERM. Returns an exit code."""
    env = stack_env(settings)
    os.environ.update(env)
    for folder in (
        settings.home,
        settings.logs_dir,
        settings.mlflow_artifacts_dir,
        settings.results_dir,
        settings.prefect_home,
    ):
        folder.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()
    previous_handlers = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    parent = os.getppid()
    supervisor = Supervisor(settings.run_dir, log)
    services = _services(settings, env)
    started = time.monotonic()
    try:
        log(f"Starting driftloop (state in {settings.home})")
        for name in ("prefect-server", "mlflow-server"):
            supervisor.start(services[name])
        for name in ("prefect-server", "mlflow-server"):
            took = supervisor.wait_healthy(services[name], settings.startup_timeout_s)
            log(f"  {name} healthy after {took:.1f}s")
            if stop.is_set():
                return 130

        from driftloop import bootstrap

        bootstrap.register_block_types()
        bootstrap.ensure_default_blocks(settings, log)
        bootstrap.ensure_work_pool()
        if with_demo:
            from driftloop.demo.setup import prepare_demo

            revisions = prepare_demo(settings)
            if revisions:
                log(
                    f"  prepared demo data registry: {len(revisions)} batches, "
                    f"{revisions[-1].rows} rows at {revisions[-1].tag}"
                )
                _claim_initial_revision(revisions[-1])
        deploy_all(settings, env)
        log("  deployed prefect.yaml")
        supervisor.start(services["prefect-worker"])
        supervisor.wait_healthy(services["prefect-worker"], 5)

        watch = None
        if with_demo and not _has_champion():
            from prefect.deployments import run_deployment

            from deployments import TRAIN_CHURN_MODEL

            flow_run = run_deployment(
                TRAIN_CHURN_MODEL.full_name,
                timeout=0,
                parameters={"trigger": {"reason": "first start"}},
            )
            watch = _TrainingWatch(
                flow_run.id, settings.prefect_ui_url, str(services["prefect-worker"].log_file), log
            )

        log(
            f"\ndriftloop is up in {time.monotonic() - started:.0f}s\n"
            f"  Prefect UI  {settings.prefect_ui_url}\n"
            f"  MLflow UI   {settings.mlflow_url}\n"
            + (
                f"  Training    {settings.prefect_ui_url}/runs/flow-run/{watch.flow_run_id}\n"
                if watch
                else ""
            )
            + "Press Ctrl-C to stop."
        )
        while not stop.wait(1.0):
            dead = supervisor.dead()
            if dead:
                for service in dead:
                    log(
                        f"{service.name} exited unexpectedly (code {service.process.returncode}). "
                        f"Last lines of {service.log_file}:\n{tail(service.log_file)}"
                    )
                return 1
            if os.getppid() != parent:
                log("Parent process went away; stopping.")
                break
            if watch:
                watch.poll()
        return 0
    except StartupError as exc:
        log(f"driftloop failed to start: {exc}")
        return 1
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        # A second Ctrl-C during shutdown should not leave half-stopped processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("Stopping driftloop...")
        supervisor.stop_all()
        signal.signal(signal.SIGINT, previous_handlers[signal.SIGINT])
        log("Stopped.")


def down(settings: DriftloopSettings, log: Log = print) -> int:
    """Stop processes a previous `up` left running (e.g. after it was killed)."""
    stopped = stop_from_pid_files(settings.run_dir, settings.home, log)
    log(f"Stopped {stopped} process group(s)." if stopped else "Nothing was running.")
    return 0
