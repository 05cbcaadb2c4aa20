"""The task runner of every driftloop flow: prefect-ray's RayTaskRunner, configured by block.

- Ray starts (or is connected to) on the first submitted task, so a flow that submits nothing
  never pays for Ray.
- Where: the `driftloop-ray` block's `address`, else `RAY_ADDRESS` (Ray's own convention), else
  a local Ray on the machine's cores, dashboard off, token auth off (loopback only, and Ray would
  otherwise write a token to ~/.ray), temp dir in the state folder.
- Only against a real Prefect server: in ephemeral mode every Ray worker would start its own
  temporary Prefect server, so the runner refuses and says why.
- Cheaper task runs than prefect-ray's: settings serialized once per runner, one Ray remote
  function per set of remote options, and on each Ray worker the Prefect settings and API
  client built once per process instead of once per task run (see "Cheaper task runs" below).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

from prefect.cache_policies import CachePolicy
from prefect.client.schemas.objects import RunInput
from prefect.context import (
    AssetContext,
    EngineContext,
    FlowRunContext,
    SettingsContext,
    SyncClientContext,
    TagsContext,
    TaskRunContext,
)
from prefect.futures import PrefectFuture
from prefect.settings import get_current_settings
from prefect.states import State
from prefect.tasks import Task
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_ray import RayTaskRunner
from prefect_ray.context import RemoteOptionsContext
from prefect_ray.task_runners import PrefectRayFuture

from driftloop.core.settings import TELEMETRY_OFF, get_settings

if TYPE_CHECKING:
    from blocks.ray import RayCluster


# Pauses between attempts to start or reach Ray (see _init_with_retries).
RAY_INIT_RETRY_PAUSES_S = (5.0, 15.0)

# Ray puts Unix sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store, and
# a socket path may not exceed 107 bytes: that leaves about 44 characters for <temp>.
_MAX_RAY_TEMP_DIR = 44


def ray_temp_path(state_dir: Path) -> Path:
    """Where Ray is told its temp dir is: the state folder itself, or a short symlink to it
    if that path is too long for Ray's Unix sockets."""
    if len(str(state_dir)) <= _MAX_RAY_TEMP_DIR:
        return state_dir
    digest = hashlib.md5(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"driftloop-ray-{digest}"


def ray_temp_dir(state_dir: Path) -> Path:
    """Ray's temp dir: in the state folder, or reached through a short symlink if that path
    is too long for Ray's Unix sockets (the files still live in the state folder)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    link = ray_temp_path(state_dir)
    if link == state_dir:
        return state_dir
    if not link.is_symlink() or link.resolve() != state_dir.resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(state_dir.resolve(), target_is_directory=True)
    return link


class EphemeralPrefectError(RuntimeError):
    """Ray was asked to run tasks without a Prefect server."""


def ensure_prefect_server() -> None:
    if not get_current_settings().api.url:
        raise EphemeralPrefectError(
            "driftloop runs tasks on Ray only against a Prefect server, and PREFECT_API_URL is "
            "not set. Without it Prefect runs in ephemeral mode, where every Ray worker starts "
            "its own temporary Prefect server. Start the stack with `make up`, or set "
            "PREFECT_API_URL to your server (e.g. http://127.0.0.1:4200/api)."
        )


# --- Cheaper task runs ---------------------------------------------------------------------------
#
# prefect-ray 0.6.0's `RayTaskRunner.submit`, for every task run: serializes the whole Prefect
# settings model into the task's context (~12 ms here) and wraps its entry point in a new
# `ray.remote`, a new remote function that Ray exports to the GCS and each worker imports again.
# On the Ray worker, Prefect's `hydrated_context` rebuilds `Settings` from that dict
# (pydantic-settings, ~20 ms) and the task engine creates two `SyncPrefectClient`s (each with an
# SSL context from certifi). That was ~170 ms of orchestration per task on 2 CPUs.
#
# DriftloopRayTaskRunner keeps prefect-ray's worker entry point and Prefect's task engine, and
# changes only what is rebuilt:
# - driver: the settings are serialized once per runner (again only if the settings context
#   changes) with a digest naming them; one remote function per set of remote options.
# - worker: a process-wide cache maps that digest to a validated `SettingsContext` and an open
#   `SyncClientContext`. Each task run sets both as the current contexts (two ContextVar sets,
#   reset after) and hands Prefect's task engine a context without settings, so
#   `hydrated_context` builds no settings and `get_client(sync_client=True)` /
#   `SyncClientContext.get_or_create()` return the cached client. A miss (a new worker, other
#   settings) builds them once, as Prefect would have.
#
# The private Prefect / prefect-ray APIs this relies on are listed in FENCED_PRIVATE_APIS, are
# used only in this module, and tests/test_task_runners.py fails, naming the API, if one changes
# (it keeps a fingerprint of each one's source).

FENCED_PRIVATE_APIS: dict[str, str] = {
    # dotted name (importable) -> how this module relies on it
    "prefect.context.serialize_context": "mirrored, less settings, by _context_without_settings",
    "prefect.context._deployment_id": "read by _context_without_settings",
    "prefect.context._deployment_parameters": "read by _context_without_settings",
    "prefect.context.hydrated_context": "enters no settings if the context has none; takes the "
    "client from get_client(sync_client=True)",
    "prefect.client.orchestration.get_client": "returns the active SyncClientContext's client",
    "prefect.task_engine.SyncTaskRunEngine.initialize_run": "uses hydrated_context, then "
    "SyncClientContext.get_or_create()",
    "prefect.context.SettingsContext": "built once per worker; set per task run via __var__",
    "prefect.context.SyncClientContext": "built and entered once per worker; set per task run "
    "via __var__",
    "prefect_ray.task_runners.RayTaskRunner.submit": "mirrored by DriftloopRayTaskRunner.submit",
    "prefect_ray.task_runners.RayTaskRunner._exchange_prefect_for_ray_futures": "called by submit",
    "prefect_ray.context.RemoteOptionsContext": "read by submit",
    "prefect_ray.task_runners.RayTaskRunner._run_prefect_task": "called by run_task_on_worker "
    "with prefect-ray's keyword arguments",
}


@dataclass(frozen=True)
class WorkerSettings:
    """The flow's Prefect settings as sent to Ray workers: serialized once on the driver; the
    digest names them in each worker's cache, so a worker validates them once."""

    digest: str
    serialized: dict[str, Any]

    @classmethod
    def of(cls, context: SettingsContext | None) -> WorkerSettings:
        serialized = context.serialize() if context else {}
        text = json.dumps(serialized, sort_keys=True, default=str)
        return cls(digest=hashlib.sha256(text.encode()).hexdigest()[:32], serialized=serialized)


def _context_without_settings(asset_ctx_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """`prefect.context.serialize_context` without its "settings_context": the settings travel
    once per runner (WorkerSettings), not in every task run's context. Keep in step with
    Prefect's function (a fence test compares the two)."""
    from prefect.context import _deployment_id, _deployment_parameters

    flow_run_context = EngineContext.get()
    task_run_context = TaskRunContext.get()
    tags_context = TagsContext.get()
    deployment_id = _deployment_id.get()
    return {
        "flow_run_context": flow_run_context.serialize() if flow_run_context else {},
        "task_run_context": task_run_context.serialize() if task_run_context else {},
        "tags_context": tags_context.serialize() if tags_context else {},
        "asset_context": (
            AssetContext.from_task_and_inputs(**asset_ctx_kwargs).serialize()
            if asset_ctx_kwargs
            else {}
        ),
        "deployment_id": str(deployment_id) if deployment_id else None,
        "deployment_parameters": _deployment_parameters.get(),
    }


# Options holding objects hashed by identity (e.g. a scheduling strategy made per submission)
# would grow a runner's cache of remote functions without bound; past this many it starts again.
_MAX_REMOTE_FUNCTIONS = 64


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a remote option, with its type: `ray.remote` tells 1 from True."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", frozenset(_freeze(v) for v in value))
    return (type(value).__qualname__, value)


def options_key(options: dict[str, Any]) -> Hashable | None:
    """The cache key of a set of remote options, or None if one of them cannot be hashed."""
    key = _freeze(options)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def make_remote_function(options: dict[str, Any]) -> Any:
    """A Ray remote function running task runs with these remote options; as prefect-ray does,
    a bare `ray.remote` without options (Ray's defaults)."""
    import ray

    # Ray's stubs type remote functions by arity, which a *args/**kwargs entry point has not.
    entry: Any = run_task_on_worker
    return ray.remote(**options)(entry) if options else ray.remote(entry)


@dataclass(frozen=True)
class _WorkerPrefect:
    """What a Ray worker keeps per settings digest: the validated settings and an open client."""

    settings: SettingsContext | None
    client: SyncClientContext


# Ray worker processes: settings digest -> settings and client. One entry per flow's settings,
# nearly always exactly one; a few kept in case a worker serves flows with other settings.
_WORKER_PREFECT: dict[str, _WorkerPrefect] = {}
_WORKER_PREFECT_LOCK = threading.Lock()
_MAX_WORKER_PREFECT = 8
_worker_counts = {"builds": 0, "reuses": 0}


def worker_cache_counts() -> dict[str, int]:
    """In this process: how often task runs built the Prefect settings and client, and how
    often they reused cached ones (for tests and the benchmark)."""
    return dict(_worker_counts)


def _open_client(settings: SettingsContext | None) -> SyncClientContext:
    """An entered SyncClientContext for these settings, kept open for the process's lifetime.

    Built and entered in a throwaway copy of the current contextvars, so entering it leaves no
    context set behind; task runs set it themselves. Entering does what Prefect's own
    `SyncClientContext.get_or_create()` does once per task run: starts the HTTP client and checks
    the server's API version (once per process). Never exited: `get_or_create()` yields an
    active context without entering or exiting it, and a task that enters the client itself
    only moves its reentrancy counter.
    """

    def build() -> SyncClientContext:
        if settings is not None:
            SettingsContext.__var__.set(settings)
        client = SyncClientContext()
        client.__enter__()
        return client

    return contextvars.copy_context().run(build)


def _worker_prefect(settings: WorkerSettings) -> _WorkerPrefect:
    with _WORKER_PREFECT_LOCK:
        cached = _WORKER_PREFECT.get(settings.digest)
        if cached is not None:
            _worker_counts["reuses"] += 1
            return cached
        # What `hydrated_context` would do for every task run: validate the settings.
        context = SettingsContext(**settings.serialized) if settings.serialized else None
        built = _WorkerPrefect(settings=context, client=_open_client(context))
        if len(_WORKER_PREFECT) >= _MAX_WORKER_PREFECT:
            # The oldest entry goes; its client is left to the garbage collector rather than
            # closed, in case a task run still holds it.
            del _WORKER_PREFECT[next(iter(_WORKER_PREFECT))]
        _WORKER_PREFECT[settings.digest] = built
        _worker_counts["builds"] += 1
        return built


def run_task_on_worker(*upstream_ray_obj_refs: Any, settings: WorkerSettings, **kwargs: Any) -> Any:
    """The Ray remote function of every task run: prefect-ray's entry point, run with this
    process's cached Prefect settings and client as the current contexts.

    ``kwargs`` are prefect-ray's (task, task_run_id, parameters, wait_for, dependencies, and a
    context without settings). The contexts are set with their ContextVars, not entered as
    context managers: a ContextModel refuses to be entered twice, and these objects outlive
    the task run.
    """
    prefect = _worker_prefect(settings)
    settings_token = SettingsContext.__var__.set(prefect.settings) if prefect.settings else None
    client_token = SyncClientContext.__var__.set(prefect.client)
    try:
        return RayTaskRunner._run_prefect_task(*upstream_ray_obj_refs, **kwargs)
    finally:
        SyncClientContext.__var__.reset(client_token)
        if settings_token is not None:
            SettingsContext.__var__.reset(settings_token)


class DriftloopRayTaskRunner(RayTaskRunner):
    """RayTaskRunner that starts lazily, takes its settings from a `driftloop-ray` block, and
    runs each task with less orchestration overhead (see "Cheaper task runs" above)."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None):
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.cluster: RayCluster | None = None
        self.mode: str | None = None
        # The settings context last serialized for the workers, and that serialization.
        self._settings_source: SettingsContext | None = None
        self._worker_settings: WorkerSettings | None = None
        # Remote functions by remote options, for this runner's (this flow run's) Ray session.
        # Per runner rather than per process: Ray re-exports a remote function after a new
        # `ray.init`, but a Ray client (`ray://`) function keeps its first connection's ref.
        self._remote_functions: dict[Hashable, Any] = {}

    def duplicate(self) -> DriftloopRayTaskRunner:
        return type(self)(address=self.address, init_kwargs=self.init_kwargs)

    def configure(self, cluster: RayCluster) -> None:
        """Use this block's settings; call before the first task is submitted."""
        self.cluster = cluster

    def __enter__(self) -> DriftloopRayTaskRunner:
        ensure_prefect_server()
        # Skip RayTaskRunner.__enter__ (it calls ray.init at once); Ray starts on first submit.
        super(RayTaskRunner, self).__enter__()
        return self

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectRayFuture[Any]:
        """prefect-ray's `RayTaskRunner.submit`, step for step, except that the task run's
        context leaves out the settings (sent once per runner as WorkerSettings) and the
        remote function is reused per set of remote options. Starts Ray on first use."""
        self.start_ray()
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        task_run_id = uuid4()
        task_inputs = {
            k: collect_task_run_inputs_sync(v, future_cls=PrefectRayFuture)
            for k, v in parameters.items()
        }
        context = _context_without_settings(
            asset_ctx_kwargs={
                "task": task,
                "task_run_id": task_run_id,
                "task_inputs": task_inputs,
                "copy_to_child_ctx": True,
            }
        )
        parameters, upstream_ray_obj_refs = self._exchange_prefect_for_ray_futures(parameters)
        options = RemoteOptionsContext.get().current_remote_options
        object_ref = (
            self.remote_function(options)
            .options(name=task.name)
            .remote(
                *upstream_ray_obj_refs,
                task=task,
                task_run_id=task_run_id,
                parameters=parameters,
                wait_for=wait_for,
                dependencies=dependencies,
                context=context,
                settings=self.worker_settings(),
            )
        )
        return PrefectRayFuture[Any](task_run_id=task_run_id, wrapped_future=object_ref)

    def remote_function(self, options: dict[str, Any]) -> Any:
        """The remote function for task runs with these remote options: made once, not per
        submission as prefect-ray does (each new one is exported to the GCS and imported by
        every worker that runs it). Options that cannot be hashed get a new one each time."""
        key = options_key(options)
        if key is None:
            return make_remote_function(options)
        function = self._remote_functions.get(key)
        if function is None:
            if len(self._remote_functions) >= _MAX_REMOTE_FUNCTIONS:
                self._remote_functions.clear()
            function = self._remote_functions[key] = make_remote_function(options)
        return function

    def worker_settings(self) -> WorkerSettings:
        """The current Prefect settings, serialized for the workers: once per runner, and again
        only if the settings context is another object (e.g. under `temporary_settings`), so a
        task run still sees the settings its submission saw."""
        current = SettingsContext.get()
        if self._worker_settings is None or current is not self._settings_source:
            self._worker_settings = WorkerSettings.of(current)
            self._settings_source = current
        return self._worker_settings

    def start_ray(self) -> None:
        """Connect to the configured cluster or start a local Ray, once per flow run."""
        import ray

        if ray.is_initialized():
            return
        cluster = self.cluster
        address = self._address()
        kwargs: dict[str, Any] = {
            "namespace": "prefect",
            "log_to_driver": False,  # task logs reach the Prefect API; keep the driver quiet
            # Quiet, offline workers on any cluster, not just the ones we start.
            "runtime_env": {"env_vars": dict(TELEMETRY_OFF)},
        }
        if cluster:
            kwargs.update(cluster.init_kwargs)
            if cluster.auth_token:
                os.environ["RAY_AUTH_MODE"] = "token"
                os.environ["RAY_AUTH_TOKEN"] = cluster.auth_token.get_secret_value()
        kwargs.update(self.init_kwargs)
        if address:
            self.mode = f"cluster at {address}"
            kwargs["address"] = address
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            self.mode = "local Ray"
            kwargs.update(
                num_cpus=(cluster.num_cpus if cluster else None) or os.cpu_count(),
                include_dashboard=False,
                _temp_dir=str(ray_temp_dir(get_settings().ray_dir)),
            )
        self._init_with_retries(kwargs)
        self._owns_ray = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = ray.cluster_resources().get("CPU", 0)
        self.logger.info("Tasks run on %s: %d node(s), %g CPUs", self.mode, len(nodes), cpus)

    def _init_with_retries(self, kwargs: dict[str, Any]) -> None:
        """`ray.init`, tried again after a pause if it fails: on a busy machine a local Ray
        node can time out during start-up ("The current node timed out during startup"). Each
        failure is logged; the last one fails the task with a message that names Ray."""
        import ray

        for attempt, pause in enumerate((*RAY_INIT_RETRY_PAUSES_S, None), start=1):
            try:
                ray.init(**kwargs)
                return
            except Exception as exc:
                ray.shutdown()
                if pause is None:
                    raise RuntimeError(
                        f"Ray did not start ({self.mode}) after {attempt} attempts: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                self.logger.warning(
                    "Ray did not start (%s, attempt %d): %s: %s; trying again in %gs",
                    self.mode, attempt, type(exc).__name__, exc, pause,
                )  # fmt: skip
                time.sleep(pause)

    def share(self, value: Any) -> Any:
        """Put a large input into Ray's object store once; pass the returned reference to many
        tasks (prefect-ray resolves references in task parameters) instead of pickling the
        value into every submission."""
        import ray

        self.start_ray()
        return ray.put(value)

    def cluster_cpus(self) -> float:
        """CPUs that tasks can use. For a local Ray this is known without starting it, so a
        flow whose work is all cached never starts Ray."""
        import ray

        if not ray.is_initialized() and not self._address():
            return float((self.cluster.num_cpus if self.cluster else None) or os.cpu_count() or 1)
        self.start_ray()
        return float(ray.cluster_resources().get("CPU", 1))

    def _address(self) -> str | None:
        address = self.address or (self.cluster.address if self.cluster else None)
        return address or os.environ.get("RAY_ADDRESS") or None

    def __exit__(self, *exc_info: Any) -> None:
        import ray

        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        super(RayTaskRunner, self).__exit__(*exc_info)


def current_runner() -> DriftloopRayTaskRunner | None:
    """The Ray task runner of the flow run we are in, if it is one."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    return runner if isinstance(runner, DriftloopRayTaskRunner) else None


class FinishedFuture:
    """A task already run to a final state in this process, shaped like a submitted future."""

    def __init__(self, state: State):
        self.state = state
        self.task_run_id = state.state_details.task_run_id

    def wait(self, timeout: float | None = None) -> None:
        return None

    def result(self, raise_on_failure: bool = True) -> Any:
        return self.state.result(raise_on_failure=raise_on_failure)


def has_cached_result(task: Task, parameters: dict[str, Any]) -> bool:
    """Would this task run be a cache hit? Computes the key the task engine will compute and
    looks it up in the result store (the shared results folder)."""
    from types import SimpleNamespace

    from prefect.results import ResultStore, get_result_store

    policy = task.cache_policy
    if not isinstance(policy, CachePolicy):
        return False
    context = FlowRunContext.get()
    try:
        key = policy.compute_key(
            # No task run exists yet; driftloop's policies read only `task_ctx.task`, and one
            # that needs the run (RUN_ID) fails here and counts as a miss.
            task_ctx=cast(TaskRunContext, SimpleNamespace(task=task)),
            inputs=parameters,
            # As Prefect's task engine does: no flow, or a flow without parameters, is {}.
            flow_parameters=(context.parameters if context else None) or {},
        )
    except Exception:
        return False
    if not key:
        return False
    # `update_for_task` returns a coroutine only in async code; flows submit from sync code.
    store = cast(ResultStore, get_result_store().update_for_task(task))
    return store.exists(key)


def submit_unless_cached(
    task: Task,
    parameters: dict[str, Any],
    ray_parameters: Callable[[], dict[str, Any]] | None = None,
) -> Any:
    """Submit the task to Ray, unless its result is cached: then read it here, as a Cached
    task run, without starting or waiting for Ray. A fully cached rerun never touches Ray.

    ``ray_parameters`` returns overrides for the Ray submission only (e.g. a shared object
    reference in place of a large frame); the cache key is always computed on ``parameters``.
    """
    if has_cached_result(task, parameters):
        return FinishedFuture(task(**parameters, return_state=True))
    return task.submit(**{**parameters, **(ray_parameters() if ray_parameters else {})})
