"""`driftloop up`: the embedded stack in the foreground, and `driftloop down`.

[server profile: PostgreSQL and Redis, unless given by URL (driftloop.app.server_profile)]
  -> Prefect server (SQLite, or PostgreSQL) + MLflow server (SQLite, or PostgreSQL; local
  artifacts) + notification receiver + Ray head (unless RAY_ADDRESS names a cluster), started
  together
  -> block types, default documents, work pool, zombie-detection automation
  -> recover runs a previous stop or crash interrupted -> demo data registry and feature repo
  -> `prefect deploy --all` (prefect.yaml) -> the Ray head is healthy
  -> a process worker on the work pool, whose flow runs attach to the head (RAY_ADDRESS)
  -> first training run through the server -> supervise until SIGINT/SIGTERM

While it runs, components that die are restarted (with backoff, within a budget), and a
background sweep crashes and resumes flow runs whose process is gone (driftloop.app.recovery).
On SIGINT/SIGTERM the worker stops first, the runs it had in flight are recorded as Crashed
("service stopped"), then the servers stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast
from uuid import UUID

from driftloop.app import server_profile
from driftloop.app._prefect_server import server_argv as prefect_server_argv
from driftloop.app.ports import free_port
from driftloop.app.recovery import RunJanitor
from driftloop.app.supervisor import (
    Component,
    HttpGet,
    PathExists,
    RestartBudgetExhausted,
    StartupError,
    Supervisor,
    TcpConnect,
    processes_using,
    stop_from_pid_files,
    stop_processes,
    tail,
)
from driftloop.core import names
from driftloop.core.settings import PROJECT_ROOT, DriftloopSettings

Log = Callable[[str], None]

# Flow runs send a heartbeat this often; four missed heartbeats mark a run as a zombie.
HEARTBEAT_S = 30
# How often the service looks for runs whose process is gone.
SWEEP_S = 30.0
# The component that runs the Ray head the flow runs attach to.
RAY_HEAD = "ray-head"
# Where `driftloop setup --for-up` (`up`'s set-up, in a child process) writes what `up` needs
# next (`Prepared`, as JSON), under the run folder.
PREPARE_RESULT_FILE = "prepare.result"
# The component that runs the serving application (driftloop.app.serving.run).
SERVING = "serving"


@dataclass(frozen=True)
class Prepared:
    """What `up`'s set-up child hands back: the first training it started (if any), and where
    the serving application will answer, if the `driftloop-serving` block enables it."""

    first_training: UUID | None
    serving_url: str | None
    serving_port: int | None
    # Demo customers the online store will know: `up` prints a first request with them.
    example_ids: list[int]

    def to_json(self) -> str:
        first = str(self.first_training) if self.first_training else None
        return json.dumps({**asdict(self), "first_training": first})

    @classmethod
    def from_json(cls, text: str) -> Prepared:
        data = json.loads(text)
        first = data.get("first_training")
        return cls(UUID(first) if first else None, data.get("serving_url"),
                   data.get("serving_port"), data.get("example_ids") or [])  # fmt: skip


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
    # `python` means this environment's interpreter for every process the service starts: the
    # pool's engine command is `python -m prefect.engine`, which a stock process worker runs
    # from the PATH.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, *(p for p in env.get("PATH", "").split(os.pathsep)
                                               if p and p != venv_bin)])  # fmt: skip
    # Flow runs (children of the worker) send heartbeats, which the zombie automation watches.
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    # Deployment concurrency leases survive a server restart on disk (under PREFECT_HOME).
    # Kept in memory (Prefect's default), a restart loses them: the running flow's next lease
    # renewal then fails and Prefect cancels it, and a slot can stay taken for good.
    env.setdefault(
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
        "prefect.server.concurrency.lease_storage.filesystem",
    )
    # A run queued behind a deployment's concurrency limit asks for the slot again after this
    # many seconds (Prefect's default is 30) ...
    env.setdefault("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", "6")
    # ... but only if the worker does not fetch runs that far ahead: it takes runs due within
    # its prefetch window (default 10 s), so with the default it would ask for the slot again
    # at once, every second, for every queued run, and flood the database with state writes.
    env.setdefault("PREFECT_WORKER_PREFETCH_SECONDS", "2")
    if settings.profile == "server":
        # Every process that opens the feature store expands it in feature_store.server.yaml.
        env[server_profile.FEAST_REDIS_SETTING] = settings.feast_redis_connection
    else:
        # The embedded profile is SQLite by definition, whatever the caller's shell says; the
        # database URLs of the server profile go only to the components that use them.
        for key in (*server_profile.PREFECT_DATABASE_SETTINGS,
                    server_profile.MLFLOW_DATABASE_SETTING):  # fmt: skip
            env.pop(key, None)
    return env


def ray_state_dirs(settings: DriftloopSettings) -> tuple[str, ...]:
    """Where Ray keeps its session files (and the short link to them): the Ray head `up`
    starts, and the local Ray of a flow run started without one."""
    from flows.task_runners import ray_temp_path

    return (str(settings.ray_dir), str(ray_temp_path(settings.ray_dir)))


def external_ray_address(env: dict[str, str]) -> str | None:
    """The Ray cluster the caller of `up` named with RAY_ADDRESS (Ray's own convention): then
    the flow runs use it and `up` starts no Ray head."""
    return env.get("RAY_ADDRESS") or None


def _stop_drivers_of_dead_head(temp_dir: Path) -> Callable[[Log], None]:
    """When the Ray head died: stop the processes that were attached to it, the flow runs
    whose tasks ran there.

    Their Ray work is lost with the node, and they cannot recover it: the driver reconnects
    to the restarted head (same address, a new cluster) and waits for its tasks for ever,
    heartbeats and all, holding its deployment's concurrency slot. Stopped, a flow run ends
    Crashed (its worker reports the exit), which frees the slot; a training that ends so does
    not cover its data, so the new-data check announces that data again.

    They are found by the files they hold in the dead head's session (each driver writes its
    log there); `session_latest` still names that session, as the next head is not started
    yet. The remains of the head itself were stopped before.
    """

    def stop(log: Log) -> None:
        session = str((temp_dir / "session_latest").resolve())
        stop_processes(
            lambda: processes_using((session,)), term_signals=1, timeout_s=5.0,
            name="flow runs attached to the dead Ray head", log=log,
        )  # fmt: skip

    return stop


def ray_head(settings: DriftloopSettings, env: dict[str, str]) -> Component:
    """`ray start --head --block`: the one Ray of the stack. Every flow run attaches to it (a
    job per run) instead of starting a Ray of its own (~7 s, and on a busy machine it can time
    out during start-up).

    - GCS on `settings.ray_port`, every core of the machine, dashboard and usage stats off,
      temp dir in the state folder (through a short symlink if the folder's path is too long
      for Ray's socket paths). Token authentication off: token mode would write a token to
      ~/.ray, and the head serves this machine's flow runs.
    - Healthy once `ray start` is done: its GCS accepts connections, and `--block` has begun
      to watch the node, which it does only after the raylet registered; it then creates
      `ray_process_exit.log` in the new session (`session_latest` points at the new session
      before its GCS listens, so an earlier head's file does not count). The GCS port and the
      raylet's socket are up seconds earlier, but until `ray start` is done it cannot act on a
      SIGTERM (it waits in a blocking call to the GCS), and a stop then would hang until the
      supervisor kills it. Each probe is one syscall; `ray health-check` would be a Python
      process importing Ray, and checks only the GCS. If a Ray upgrade renamed the file,
      `up` would fail at start, naming this check.
    - Started in the checkout, like the worker. Ray workers import the flows' modules by name,
      from the editable install and from the flow run's working directory, which Ray puts on
      the sys.path of the run's job. Ray starts fresh workers for every job, so a flow run
      imports the checkout as it is when the run starts.
    - Stopping it stops its whole session: `ray start`, the GCS, the raylet and the Ray
      workers. `ray start --block` alone also stops them all on SIGTERM, which is what Linux
      sends it if `up` is killed outright. If `ray start` dies, its GCS and raylet die with
      it, but the raylet's agents live on and do not stop on SIGTERM without them: they get a
      short grace before SIGKILL. The flow runs attached to it are stopped too (see
      `_stop_drivers_of_dead_head`), then the head is restarted.
    """
    from flows.task_runners import ray_temp_dir

    temp_dir = ray_temp_dir(settings.ray_dir)
    head_env = {key: value for key, value in env.items() if key != "RAY_ADDRESS"}
    head_env.update(
        {
            "RAY_AUTH_MODE": "disabled",
            # On SIGTERM `ray start` first asks the GCS to drain the node, for up to 30 s by
            # default, so that Ray Serve can move its replicas. There is nothing to drain here,
            # and a stop must not wait for it.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }
    )
    return Component(
        name=RAY_HEAD,
        argv=[sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
              "--port", str(settings.ray_port),
              "--num-cpus", str(os.cpu_count() or 1),
              "--include-dashboard=false", "--disable-usage-stats",
              # Two Python processes a one-machine head has no use for (about 100 MB of an
              # idle service, measured): the autoscaler's monitor (there is nothing to
              # scale), and the log monitor, which copies Ray workers' stdout and stderr to
              # the flow run's output. Task logs reach Prefect from the workers themselves,
              # and the workers' own output stays in the session's logs/worker-*.out|err.
              "--no-monitor", "--include-log-monitor=false",
              "--temp-dir", str(temp_dir),
              # Ray's fixed defaults for these (10001, 52365) would clash with a second stack
              # on the machine (the tests' stack beside `make up`); Ray picks the other ports
              # at random. The Ray client server cannot be switched off.
              "--ray-client-server-port", str(free_port()),
              "--dashboard-agent-listen-port", str(free_port())],
        env=head_env,
        log_file=settings.logs_dir / f"{RAY_HEAD}.log",
        port=settings.ray_port,
        health=(
            TcpConnect(settings.host, settings.ray_port),
            PathExists(temp_dir / "session_latest" / "logs" / "ray_process_exit.log"),
        ),
        cwd=PROJECT_ROOT,
        startup_timeout_s=settings.startup_timeout_s,
        leftover_grace_s=2.0,
        on_exit=_stop_drivers_of_dead_head(temp_dir),
    )  # fmt: skip


def _components(settings: DriftloopSettings, env: dict[str, str]) -> dict[str, Component]:
    """The stack's components. The Ray head only if the caller did not name a cluster with
    RAY_ADDRESS; the worker's flow runs (which inherit its environment) get RAY_ADDRESS
    either way. The `driftloop-ray` block's `address`, if set, still wins over RAY_ADDRESS
    (flows/task_runners.py)."""
    python = sys.executable
    logs = settings.logs_dir
    timeout = settings.startup_timeout_s
    prefect_env, mlflow_env = env, env
    mlflow_store = ["--backend-store-uri", settings.mlflow_backend_uri]
    databases: dict[str, Component] = {}
    if settings.profile == "server":
        dbs = server_profile.Databases.of(settings, env)
        prefect_env = {**env, server_profile.PREFECT_DATABASE_SETTINGS[0]: dbs.prefect_url}
        # MLflow reads its store from the environment: a password stays off its command line.
        mlflow_env = {**env, server_profile.MLFLOW_DATABASE_SETTING: dbs.mlflow_url}
        mlflow_store = []
        if dbs.local_postgres:
            databases[server_profile.POSTGRES] = server_profile.postgres(settings, env)
        if dbs.local_redis:
            databases[server_profile.REDIS] = server_profile.redis(settings, env)
    head = None if external_ray_address(env) else ray_head(settings, env)
    worker_env = env if head is None else {**env, "RAY_ADDRESS": settings.ray_address}
    if settings.worker == "stock":
        # Prefect's process worker, for comparison: it finds runs only by polling, so it
        # polls every second (Prefect's default is 10 s).
        worker_argv = [python, "-m", "prefect", "worker", "start", "--pool", names.WORK_POOL,
                       "--type", "process", "--name", settings.worker_name]  # fmt: skip
        poll_s = "1"
    else:
        # driftloop's worker is woken by the pool's events; its poll is only the fallback.
        worker_argv = [python, "-m", "driftloop.app.worker", "--pool", names.WORK_POOL,
                       "--name", settings.worker_name]  # fmt: skip
        poll_s = "5"
    worker_env = {**worker_env, "PREFECT_WORKER_QUERY_SECONDS": env.get(
        "PREFECT_WORKER_QUERY_SECONDS", poll_s)}  # fmt: skip
    components = {
        **databases,
        "prefect-server": Component(
            name="prefect-server",
            # Prefect's server, its SQLite writes begun IMMEDIATE (see the module).
            argv=prefect_server_argv(settings.host, settings.prefect_port),
            env=prefect_env,
            log_file=logs / "prefect-server.log",
            health_url=f"{settings.prefect_api_url}/health",
            port=settings.prefect_port,
            startup_timeout_s=timeout,
        ),
        "mlflow-server": Component(
            name="mlflow-server",
            # `mlflow server`, as the server process itself (driftloop.app._mlflow_server).
            argv=[python, "-m", "driftloop.app._mlflow_server", *mlflow_store,
                  "--artifacts-destination", str(settings.mlflow_artifacts_dir),
                  "--host", settings.host, "--port", str(settings.mlflow_port),
                  "--workers", "1"],
            env=mlflow_env,
            log_file=logs / "mlflow-server.log",
            health_url=f"{settings.mlflow_url}/health",
            port=settings.mlflow_port,
            startup_timeout_s=timeout,
        ),
        # Where the default notification block sends (driftloop.app.notify_receiver).
        "notify-receiver": Component(
            name="notify-receiver",
            argv=[python, "-m", "driftloop.app.notify_receiver", "--host", settings.host,
                  "--port", str(settings.notify_port), "--file", str(settings.notifications_file)],
            env=env,
            log_file=logs / "notify-receiver.log",
            health_url=f"http://{settings.host}:{settings.notify_port}/health",
            port=settings.notify_port,
            startup_timeout_s=timeout,
        ),
        "prefect-worker": Component(
            name="prefect-worker",
            argv=worker_argv,
            env=worker_env,
            log_file=logs / "prefect-worker.log",
            term_signals=2,
            cwd=PROJECT_ROOT,
            startup_timeout_s=timeout,
        ),
    }  # fmt: skip
    if head is not None:
        components[RAY_HEAD] = head
    return components


def serving_banner(prepared: Prepared) -> str:
    """The lines of `up`'s banner about the serving application: where, and a first request."""
    if not prepared.serving_url:
        return ""
    url = f"{prepared.serving_url}/predict"
    banner = f"  Serving     {url} (answers once a champion is promoted)\n"
    if prepared.example_ids:
        from driftloop.app.demo import DEMO_ENTITY

        body = json.dumps({DEMO_ENTITY: prepared.example_ids})
        banner += f"              curl -s {url} -d '{body}'\n"
    return banner


def serving_component(
    settings: DriftloopSettings, components: dict[str, Component], prepared: Prepared
) -> Component:
    """`driftloop serve` on the stack's Ray (the worker's RAY_ADDRESS: the head, or the
    cluster the caller named). Started after the worker, so the blocks exist and the Ray head
    serves; stopped first. Healthy once the application's `/health` answers, which needs a
    replica that has imported the model libraries: it gets a longer start-up allowance."""
    assert prepared.serving_url is not None
    worker = components["prefect-worker"]
    return Component(
        name=SERVING,
        argv=[sys.executable, "-m", "driftloop.app.serving.run"],
        env={k: v for k, v in worker.env.items() if k != "PREFECT_WORKER_QUERY_SECONDS"},
        log_file=settings.logs_dir / f"{SERVING}.log",
        health_url=f"{prepared.serving_url}/health",
        port=prepared.serving_port,
        cwd=PROJECT_ROOT,
        startup_timeout_s=settings.startup_timeout_s * 2,
    )


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


def _has_champion() -> bool:
    from blocks.mlflow import MlflowTracking
    from tasks.registry import find_champion

    return find_champion(MlflowTracking.load_named(names.DEFAULT_BLOCK)) is not None


def _training_in_flight(deployment_name: str) -> bool:
    """A training run of the deployment (its name in prefect.yaml) that is scheduled (a
    resumed one, say) or running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(
                        any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
                    )
                )
            ),
            limit=20,
        )
    # Leave out the runs the schedule created ahead of time (e.g. tonight's retraining).
    return any(r.state and r.state.name != "Scheduled" for r in runs)


class _TrainingWatch:
    """Follows the first training run and reports how it ended."""

    def __init__(self, flow_run_id, ui_url: str, log: Log):
        self.flow_run_id = flow_run_id
        self.ui_url = ui_url
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
                f"Training run {run.name!r} ended {run.state.name}: {url}\n  ({run.state.message})"
            )


class _Background:
    """Periodic work that talks to the Prefect API, off the supervision loop: an API call can
    block for a minute while a server restarts, and restarts must not wait for it."""

    def __init__(self, log: Log):
        self.log = log
        self.jobs: list[tuple[float, Callable[[], None]]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="driftloop-sweeps", daemon=True)
        self._last_error: dict[str, str] = {}

    def every(self, seconds: float, job: Callable[[], None]) -> None:
        self.jobs.append((seconds, job))

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        due = [0.0 for _ in self.jobs]
        while not self.stopped.wait(1.0):
            now = time.monotonic()
            for i, (seconds, job) in enumerate(self.jobs):
                if now < due[i]:
                    continue
                due[i] = now + seconds
                name = getattr(job, "__name__", "job")
                try:
                    job()
                    self._last_error.pop(name, None)
                except Exception as exc:  # the server may be restarting: try again later
                    text = f"{type(exc).__name__}: {exc}"
                    if self._last_error.get(name) != text:
                        self.log(f"  ({name} failed, will retry: {text[:300]})")
                    self._last_error[name] = text

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=90)


class NotificationRelay:
    """Prints the subject of each notification the local receiver got since `up` started, so
    the terminal shows what a person would be told."""

    def __init__(self, file: Path, log: Log):
        self.file = file
        self.log = log
        self.offset = file.stat().st_size if file.exists() else 0

    def poll(self) -> None:
        import json

        if not self.file.exists():
            return
        with self.file.open("rb") as handle:
            handle.seek(self.offset)
            lines = handle.readlines()
        for line in lines:
            if not line.endswith(b"\n"):
                break  # being written; read it next time
            self.offset += len(line)
            with contextlib.suppress(ValueError):
                self.log(f"  notification: {json.loads(line).get('subject', '')}")


def _claim_initial_revision(revision) -> None:
    """The first training (below) covers the demo's initial data: record its revision as seen,
    so the new-data check does not announce it and start a second training on the same data."""
    from blocks.dvc import DvcDataset
    from driftloop.core.dataset_events import claim_revision

    dataset = DvcDataset.load_named(names.DEFAULT_BLOCK)
    claim_revision(dataset.name, revision.md5, revision.commit, by="driftloop up (initial data)")


@contextlib.contextmanager
def narration_to(path: Path) -> Iterator[None]:
    """Send what Feast and DVC print while the demo is set up (and their logs) to a log file;
    the terminal keeps driftloop's own lines.

    Their loggers write to the file and stop propagating to the root logger, whose handler
    (Prefect's console handler) holds the terminal's stream: setting their level is not
    enough, as DVC sets its loggers' levels again when it initialises a repository."""
    import logging

    loggers = [logging.getLogger(name) for name in ("dvc", "feast")]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    with (
        path.open("a") as handle,
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
    ):
        to_file = logging.StreamHandler(handle)
        to_file.setLevel(logging.INFO)
        for logger in loggers:
            logger.addHandler(to_file)
            logger.propagate = False
        try:
            yield
        finally:
            for logger, (level, propagate) in zip(loggers, saved, strict=True):
                logger.removeHandler(to_file)
                logger.setLevel(level)
                logger.propagate = propagate


def _recover(janitor: RunJanitor, log: Log) -> None:
    """Before the worker starts, no flow run of the pool can have a live process from this
    service: end every run a previous stop or crash left in flight, then resume them."""
    crashed = janitor.crash_zombies(pending_grace_s=0.0)
    resumed = janitor.resume_interrupted()
    if crashed or resumed:
        log(f"  recovered {len(crashed)} interrupted run(s), resumed {len(resumed)}")


def set_up(
    settings: DriftloopSettings,
    env: dict[str, str],
    *,
    with_demo: bool = True,
    log: Log = print,
    before_demo: Callable[[], None] = lambda: None,
) -> None:
    """What a Prefect server needs before driftloop's runs: block types and default block
    documents, the work pool, the zombie-detection and notification automations, the demo
    data (`with_demo`), and `prefect deploy --all`. Idempotent. `up` runs it against its own
    server; `driftloop setup` against PREFECT_API_URL (compose's one-shot `setup` service)."""
    from driftloop.app import bootstrap

    bootstrap.register_block_types()
    bootstrap.ensure_default_blocks(settings, log)
    bootstrap.ensure_work_pool()
    bootstrap.ensure_zombie_automation(HEARTBEAT_S)
    block_id = bootstrap.ensure_notification_block(settings)
    bootstrap.ensure_notification_automations(block_id, settings.renotify_minutes)
    before_demo()
    if with_demo:
        from driftloop.app.demo.setup import materialize_online, prepare_demo

        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        with narration_to(settings.logs_dir / "demo-setup.log"):
            revisions = prepare_demo(settings)
        if revisions:
            log(
                f"  prepared demo data registry: {len(revisions)} batches, "
                f"{revisions[-1].rows} rows at {revisions[-1].tag}"
            )
            _claim_initial_revision(revisions[-1])
            with narration_to(settings.logs_dir / "demo-setup.log"):
                materialize_online(settings)
    deploy_all(settings, env)
    log("  deployed prefect.yaml")


def start_first_training() -> UUID | None:
    """The demo's first training, unless a champion exists or a training is already
    scheduled or running (a resumed one, say). Returns the new run's id."""
    if _has_champion():
        return None
    from deployments import DeploymentNotFoundError, find_deployment
    from driftloop.app import demo

    training = demo.DEMO_TRAINING_DEPLOYMENT
    try:  # prefect.yaml is edited by hand: say so if the demo's training is not there
        find_deployment(training)
    except DeploymentNotFoundError as exc:
        raise StartupError(f"cannot start the first training: {exc}") from exc
    if _training_in_flight(training):
        return None
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    # run_deployment takes `<flow name>/<deployment name>`; called from sync code it returns
    # the flow run, not a coroutine.
    flow_run = cast(
        FlowRun,
        run_deployment(
            f"{names.FLOW_TRAIN}/{training}",
            timeout=0,
            parameters={"trigger": {"reason": names.REASON_FIRST_START}},
        ),
    )
    return flow_run.id


def prepare(settings: DriftloopSettings, *, with_demo: bool, log: Log = print) -> Prepared:
    """`up`'s set-up of its own server: `set_up`, with the runs a previous stop or crash left
    in flight ended and resumed before the demo data, then the demo's first training.
    Returns the first training's run id, if one was started, and the serving block's address.

    `up` runs it in a child process (`driftloop setup --for-up`), started with the servers
    and ended before the worker starts. The set-up imports MLflow, Feast, DVC and pandas:
    done in `up` itself, they stayed in its memory for the life of the service (about 250 MB
    of an idle service, measured); the child gives them back when it ends."""
    janitor = RunJanitor(worker_name=settings.worker_name, log=log)
    servers = [HttpGet(f"{url}/health") for url in (settings.prefect_api_url, settings.mlflow_url)]
    deadline = time.monotonic() + settings.startup_timeout_s
    while not all(server.passes() for server in servers):
        if time.monotonic() > deadline:
            raise StartupError("the set-up gave up waiting for the Prefect and MLflow servers")
        time.sleep(0.25)
    set_up(
        settings,
        stack_env(settings),
        with_demo=with_demo,
        log=log,
        before_demo=lambda: _recover(janitor, log),
    )
    from blocks.serving import ServingConfig
    from driftloop.app.demo.setup import example_entities

    serving = ServingConfig.load_named(names.DEFAULT_BLOCK)
    return Prepared(
        first_training=start_first_training() if with_demo else None,
        serving_url=serving.base_url if serving.enabled else None,
        serving_port=serving.port if serving.enabled else None,
        example_ids=example_entities(settings.feature_repo_dir) if with_demo else [],
    )


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
    supervisor = Supervisor(settings.run_dir, service_id=uuid.uuid4().hex, log=log)
    components = _components(settings, env)
    janitor = RunJanitor(worker_name=settings.worker_name, log=log)
    background = _Background(log)
    started = time.monotonic()
    code = 0
    try:
        log(f"Starting driftloop, {settings.profile} profile (state in {settings.home})")
        _start_databases(settings, env, supervisor, components, log)
        if stop.is_set():
            return 130
        servers = ("prefect-server", "mlflow-server", "notify-receiver")
        head = components.get(RAY_HEAD)
        if head is None:
            log(
                f"  RAY_ADDRESS is set ({external_ray_address(env)}): flow runs use that Ray "
                "cluster, so no Ray head is started"
            )
        # The Ray head starts with the servers and comes up while the set-up below runs;
        # only the worker waits for it.
        for name in servers + ((RAY_HEAD,) if head else ()):
            supervisor.start(components[name])
        # The set-up starts with the servers, in a child process (see `prepare`):
        # its imports, seconds of CPU, overlap their start-up, and it waits for them itself.
        prepare_result = settings.run_dir / PREPARE_RESULT_FILE
        prepare_result.unlink(missing_ok=True)
        preparing = supervisor.start_one_shot(
            "the set-up",
            [sys.executable, "-m", "driftloop.app.cli", "setup", "--for-up", str(prepare_result)]
            + ([] if with_demo else ["--no-demo"]),
            env,
            cwd=PROJECT_ROOT,
        )
        try:
            for name in servers:
                took = supervisor.wait_healthy(components[name], settings.startup_timeout_s)
                log(f"  {name} healthy after {took:.1f}s")
                if stop.is_set():
                    return 130
            code = preparing.wait(stop)
        finally:
            preparing.interrupt()
        if code is None:
            return 130
        if code != 0 or not prepare_result.exists():
            raise StartupError(f"the set-up failed (exit code {code}); its output is above")
        prepared = Prepared.from_json(prepare_result.read_text())
        first_training = prepared.first_training
        if head is not None:
            # Flow runs attach to the head; none may start before it serves.
            took = supervisor.wait_healthy(head, settings.startup_timeout_s)
            log(f"  {RAY_HEAD} healthy after {took:.1f}s (Ray at {settings.ray_address})")
            if stop.is_set():
                return 130
        supervisor.start(components["prefect-worker"])
        supervisor.wait_healthy(components["prefect-worker"], 5)
        if prepared.serving_url:
            # Not waited for: its replica imports the model libraries while the first
            # training runs, and the supervisor says when it is healthy.
            components[SERVING] = serving_component(settings, components, prepared)
            supervisor.start(components[SERVING])

        watch = (
            _TrainingWatch(first_training, settings.prefect_ui_url, log) if first_training else None
        )

        log(
            f"\ndriftloop is up in {time.monotonic() - started:.0f}s\n"
            f"  Prefect UI  {settings.prefect_ui_url}\n"
            f"  MLflow UI   {settings.mlflow_url}\n"
            + serving_banner(prepared)
            + (
                f"  Training    {settings.prefect_ui_url}/runs/flow-run/{watch.flow_run_id}\n"
                if watch
                else ""
            )
            + "Press Ctrl-C to stop."
        )

        def sweep_runs() -> None:
            if supervisor.is_running("prefect-server"):
                janitor.crash_zombies()
                janitor.resume_interrupted()

        def follow_first_training() -> None:
            if watch and supervisor.is_running("prefect-server"):
                watch.poll()

        relay = NotificationRelay(settings.notifications_file, log)
        background.every(SWEEP_S, sweep_runs)
        background.every(2.0, follow_first_training)
        background.every(2.0, relay.poll)
        background.start()
        while not stop.wait(1.0):
            supervisor.watch()
            if os.getppid() != parent:
                log("Parent process went away; stopping.")
                break
    except StartupError as exc:
        log(f"driftloop failed to start: {exc}")
        code = 1
    except RestartBudgetExhausted as exc:
        log(f"driftloop is stopping: {exc}.")
        code = 1
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        # A second Ctrl-C during shutdown should not leave half-stopped processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("Stopping driftloop...")
        background.stop()
        _shutdown(supervisor, components, janitor, log, ray_state_dirs(settings))
        signal.signal(signal.SIGINT, previous_handlers[signal.SIGINT])
        log("Stopped.")
    return code


def _start_databases(
    settings: DriftloopSettings,
    env: dict[str, str],
    supervisor: Supervisor,
    components: dict[str, Component],
    log: Log,
) -> None:
    """The server profile's databases, before the servers that use them: the local
    PostgreSQL (initialised once, its databases created) and Redis, or the URLs given."""
    if settings.profile != "server":
        return
    dbs = server_profile.Databases.of(settings, env)
    postgres = components.get(server_profile.POSTGRES)
    redis = components.get(server_profile.REDIS)
    if postgres is not None:
        server_profile.ensure_cluster(settings)
        supervisor.start(postgres)
    if redis is not None:
        supervisor.start(redis)
    if postgres is not None:
        took = supervisor.wait_healthy(postgres, settings.startup_timeout_s)
        created = server_profile.ensure_databases(settings, dbs.local_databases)
        log(
            f"  postgres healthy after {took:.1f}s (port {settings.postgres_port}"
            + (f"; created database(s) {', '.join(created)})" if created else ")")
        )
    if redis is not None:
        took = supervisor.wait_healthy(redis, settings.startup_timeout_s)
        log(f"  redis healthy after {took:.1f}s (port {settings.redis_port})")
    log(f"  Prefect's database: {server_profile.redacted(dbs.prefect_url)}")
    log(f"  MLflow's backend store: {server_profile.redacted(dbs.mlflow_url)}")
    if redis is None:
        log(f"  Feast's online store: the Redis that {server_profile.FEAST_REDIS_SETTING} names")
    if dbs.prediction_log_url:
        log(
            "  The serving application's prediction log: "
            + server_profile.redacted(dbs.prediction_log_url)
        )


def _shutdown(
    supervisor: Supervisor,
    components: dict[str, Component],
    janitor: RunJanitor,
    log: Log,
    state_dirs: tuple[str, ...] = (),
) -> None:
    """Worker first, so no new run starts; then record the runs it had in flight as Crashed
    ("service stopped") while the server is still up; then everything else."""
    worker = components["prefect-worker"]
    if worker in supervisor.components:
        supervisor.stop(worker)
    if supervisor.is_running("prefect-server"):
        try:
            in_flight = janitor.in_flight()
            if in_flight:
                log(f"  recording {len(in_flight)} flow run(s) in flight as Crashed")
            janitor.stop_in_flight(in_flight)
        except Exception as exc:  # never let this keep the servers from stopping
            log(f"  could not record the runs in flight ({type(exc).__name__}: {exc})")
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=5)
    supervisor.stop_all(state_dirs=state_dirs)


def down(settings: DriftloopSettings, log: Log = print) -> int:
    """Stop processes a previous `up` left running (e.g. after it was killed)."""
    stopped = stop_from_pid_files(
        settings.run_dir, settings.home, log, state_dirs=ray_state_dirs(settings)
    )
    log(f"Stopped {stopped} process group(s)." if stopped else "Nothing was running.")
    return 0
