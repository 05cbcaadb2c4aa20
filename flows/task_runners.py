"""The task runner of every driftloop flow: prefect-ray's RayTaskRunner, configured by block.

- Ray starts (or is connected to) on the first submitted task, so a flow that submits nothing
  never pays for Ray.
- Where: the `driftloop-ray` block's `address`, else `RAY_ADDRESS` (Ray's own convention), else
  a local Ray on the machine's cores, dashboard off, token auth off (loopback only, and Ray would
  otherwise write a token to ~/.ray), temp dir in the state folder.
- Only against a real Prefect server: in ephemeral mode every Ray worker would start its own
  temporary Prefect server, so the runner refuses and says why.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect.cache_policies import CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.settings import get_current_settings
from prefect.states import State
from prefect.tasks import Task
from prefect_ray import RayTaskRunner

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


class DriftloopRayTaskRunner(RayTaskRunner):
    """RayTaskRunner that starts lazily and takes its settings from a `driftloop-ray` block."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None):
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.cluster: RayCluster | None = None
        self.mode: str | None = None

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

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        self.start_ray()
        return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

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
