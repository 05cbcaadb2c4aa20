"""Where tasks run: a local Ray by default, never in Prefect's ephemeral mode."""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import inspect
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from flows.task_runners import DriftloopRayTaskRunner, EphemeralPrefectError, ray_temp_dir


def test_refuses_ephemeral_prefect():
    runner = DriftloopRayTaskRunner()
    with (
        temporary_settings(updates={PREFECT_API_URL: None}),
        pytest.raises(EphemeralPrefectError, match="only against a Prefect server"),
    ):
        runner.__enter__()


@pytest.mark.slow
def test_default_is_a_local_ray_and_a_cached_rerun_never_starts_it(demo, tmp_path):
    """Two training runs in fresh processes (as a worker runs them), no Ray configured."""
    from tests.helpers import make_mlflow, run_training_subprocess, task_states

    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update({"HOME": str(home), "DRIFTLOOP_HOME": str(state)})
    mlflow = make_mlflow(tmp_path / "mlflow")
    kwargs = {
        "features": {"feature_service": "churn_model_v1"},
        "search": {"n_trials": 3, "parallelism": 2, "seed": 42},
        "dataset_block": demo.dataset_block,
        "feast_block": demo.feast_block,
        "mlflow_block": mlflow.block_name,
    }
    first = run_training_subprocess(kwargs, env)
    assert first["trials_completed"] == 3
    # The state folder's path is too long for Ray's sockets here, so Ray reached it through
    # a short symlink; the session itself lives in the state folder.
    sessions = list((state / "ray").glob("session_2*"))
    assert len(sessions) == 1, "a local Ray did not start in the state folder"
    assert list(home.iterdir()) == [], "something was written to HOME (e.g. ~/.ray)"
    for path in (state / "ray", ray_temp_dir(state / "ray")):
        leftovers = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True,
                                   check=False)  # fmt: skip
        assert leftovers.stdout.strip() == "", f"Ray processes left behind ({path})"

    # Another gate: the same model is judged again (the same inputs would be skipped).
    second = run_training_subprocess({**kwargs, "gate": {"min_improvement": 0.01}}, env)
    assert len(list((state / "ray").glob("session_2*"))) == 1, "a cached rerun started Ray"
    states = task_states(second["flow_run_id"], expect=["fit-model"])
    trials = [s for name, runs in states.items() if name.startswith("trial") for s in runs]
    assert trials == ["Cached"] * 3
    assert states["fit-model"] == ["Cached"] * 2  # the judged fit and the refit


# --- Cheaper task runs: the fences around private Prefect / prefect-ray APIs ----------------------

# Fingerprints (sha256 of the source, first 16 hex digits) of every private API in
# flows.task_runners.FENCED_PRIVATE_APIS, as of prefect 3.8.8 and prefect-ray 0.6.0. A mismatch
# means an upgrade changed code that DriftloopRayTaskRunner mirrors or relies on: re-read the
# new source against flows/task_runners.py, adapt it if needed, then update the fingerprint.
PRIVATE_API_FINGERPRINTS = {
    "prefect.context.serialize_context": "aabeee621c8b146c",
    "prefect.context._deployment_id": "ContextVar:deployment_id",
    "prefect.context._deployment_parameters": "ContextVar:deployment_parameters",
    "prefect.context.hydrated_context": "245157195e9467ae",
    "prefect.client.orchestration.get_client": "6c55a717d816cffa",
    "prefect.task_engine.SyncTaskRunEngine.initialize_run": "b7c13eb6f31f943b",
    "prefect.context.SettingsContext": "340575a960e7b94d",
    "prefect.context.SyncClientContext": "0932f4fe23fa7db3",
    "prefect_ray.task_runners.RayTaskRunner.submit": "fd5a1b4f775ef044",
    "prefect_ray.task_runners.RayTaskRunner._exchange_prefect_for_ray_futures": "a5d5e949d672a521",
    "prefect_ray.context.RemoteOptionsContext": "84f7b1d757e0e334",
    "prefect_ray.task_runners.RayTaskRunner._run_prefect_task": "f41e4875a2e003f8",
}


def _resolve(dotted: str) -> Any:
    """The object at an importable dotted name (module path, then attributes)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _fingerprint(obj: Any) -> str:
    if isinstance(obj, contextvars.ContextVar):
        return f"ContextVar:{obj.name}"
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def _versions() -> str:
    from importlib.metadata import version

    return f"prefect {version('prefect')}, prefect-ray {version('prefect-ray')}"


def test_private_prefect_apis_are_unchanged():
    """Fails, naming the API, if an upgrade changed a private API the runner relies on."""
    from flows.task_runners import FENCED_PRIVATE_APIS

    assert set(PRIVATE_API_FINGERPRINTS) == set(FENCED_PRIVATE_APIS), (
        "flows/task_runners.py FENCED_PRIVATE_APIS and this test's fingerprints disagree"
    )
    changed = []
    for api in FENCED_PRIVATE_APIS:
        try:
            found = _fingerprint(_resolve(api))
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            changed.append(f"{api}: gone ({type(exc).__name__}: {exc})")
            continue
        if found != PRIVATE_API_FINGERPRINTS[api]:
            changed.append(
                f"{api}: source changed ({found}); relied on: {FENCED_PRIVATE_APIS[api]}"
            )
    assert not changed, (
        f"Private Prefect/prefect-ray APIs that DriftloopRayTaskRunner relies on changed "
        f"({_versions()}):\n  " + "\n  ".join(changed)
    )


def test_private_prefect_apis_behave_as_relied_on():
    """What the runner needs of them, checked by behaviour (no server or Ray needed)."""
    from prefect.client.orchestration import get_client
    from prefect.context import (
        SettingsContext,
        SyncClientContext,
        TagsContext,
        hydrated_context,
        serialize_context,
    )
    from prefect_ray.task_runners import RayTaskRunner

    from flows.task_runners import _context_without_settings

    # RayTaskRunner._run_prefect_task takes the keywords run_task_on_worker passes on.
    params = inspect.signature(RayTaskRunner._run_prefect_task).parameters
    assert list(params) == ["upstream_ray_obj_refs", "task", "task_run_id", "context",
                            "parameters", "wait_for", "dependencies"], (
        f"prefect_ray RayTaskRunner._run_prefect_task's signature changed: {list(params)}"
    )  # fmt: skip

    # serialize_context: the same keys as _context_without_settings, plus settings.
    full, lean = serialize_context(), _context_without_settings()
    assert set(full) == set(lean) | {"settings_context"}, (
        f"prefect.context.serialize_context's keys changed: {sorted(full)}"
    )
    assert {k: v for k, v in full.items() if k != "settings_context"} == lean

    # SettingsContext / SyncClientContext are set through their ContextVars; get_client
    # returns the client of the active SyncClientContext; hydrated_context leaves the current
    # settings alone when the context carries none.
    settings = SettingsContext(**SettingsContext.get().serialize())
    settings_token = SettingsContext.__var__.set(settings)
    try:
        client = SyncClientContext()  # not entered: that would call the API
        client_token = SyncClientContext.__var__.set(client)
        try:
            assert SettingsContext.get() is settings, "prefect.context.SettingsContext.__var__"
            assert get_client(sync_client=True) is client.client, (
                "prefect get_client(sync_client=True) no longer returns the active "
                "SyncClientContext's client"
            )
            with hydrated_context({**lean, "tags_context": {"current_tags": {"fence"}}}):
                assert SettingsContext.get() is settings, (
                    "prefect.context.hydrated_context replaced the settings of a context "
                    "without settings_context"
                )
                assert TagsContext.get().current_tags == {"fence"}
        finally:
            SyncClientContext.__var__.reset(client_token)
    finally:
        SettingsContext.__var__.reset(settings_token)


def test_private_prefect_apis_are_used_only_in_task_runners():
    """The fence: outside flows/task_runners.py (and the tests), no code uses them."""
    from driftloop.core.settings import PROJECT_ROOT

    names = ("_run_prefect_task", "_exchange_prefect_for_ray_futures", "serialize_context",
             "hydrated_context", "SettingsContext", "SyncClientContext", "_deployment_id",
             "_deployment_parameters", "RemoteOptionsContext")  # fmt: skip
    users = []
    for folder in ("driftloop", "blocks", "tasks", "flows", "bench"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if path == PROJECT_ROOT / "flows" / "task_runners.py":
                continue
            text = path.read_text()
            users += [f"{path.relative_to(PROJECT_ROOT)}: {n}" for n in names if n in text]
    assert not users, (
        f"private Prefect/prefect-ray APIs used outside flows/task_runners.py: {users}"
    )


def test_remote_functions_are_reused_per_set_of_options():
    from flows.task_runners import options_key

    runner = DriftloopRayTaskRunner()
    one = runner.remote_function({"num_cpus": 1, "max_retries": 2})
    assert runner.remote_function({"max_retries": 2, "num_cpus": 1}) is one
    assert runner.remote_function({"num_cpus": 2, "max_retries": 2}) is not one
    assert runner.remote_function({}) is runner.remote_function({})
    assert runner.remote_function({}) is not one
    # Ray tells these apart; so does the cache.
    assert options_key({"num_cpus": 1}) != options_key({"num_cpus": True})

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

    assert options_key({"scheduling_strategy": Unhashable()}) is None


def test_settings_are_serialized_once_per_runner_and_again_when_they_change():
    from prefect.settings import PREFECT_TASKS_DEFAULT_RETRIES

    runner = DriftloopRayTaskRunner()
    first = runner.worker_settings()
    assert runner.worker_settings() is first
    with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 7}):
        changed = runner.worker_settings()
    assert changed.digest != first.digest
    assert changed.serialized["settings"]["tasks"]["default_retries"] == 7
    assert runner.worker_settings().digest == first.digest


# --- Cheaper task runs on a real Ray and Prefect server -------------------------------------------

PROBE_RUNS = 10


@task(name="probe-worker")
def probe_worker(number: int, marker: str) -> dict[str, Any]:
    """What the task run sees on its Ray worker; logs ``marker`` to the Prefect API."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext, SettingsContext, SyncClientContext

    from flows.task_runners import worker_cache_counts

    # WARNING: the tests run with PREFECT_LOGGING_LEVEL=WARNING.
    get_run_logger().warning("%s %d", marker, number)
    settings, client_context, flow_run = (
        SettingsContext.get(), SyncClientContext.get(), FlowRunContext.get()
    )  # fmt: skip
    assert settings and client_context and flow_run
    return {
        "pid": os.getpid(),
        "settings": id(settings),
        "client": id(get_client(sync_client=True)),
        "context_client": id(client_context.client),
        "flow_run_client": id(flow_run.client),
        "api_url": settings.settings.api.url,
        **worker_cache_counts(),
    }


@task(name="probe-retried", retries=1, retry_delay_seconds=0)
def probe_retried() -> int:
    from prefect.runtime import task_run

    if task_run.run_count < 2:
        raise RuntimeError("first attempt fails")
    return task_run.run_count


@task(name="probe-fails")
def probe_fails() -> None:
    raise ValueError("fails on purpose")


@flow(task_runner=DriftloopRayTaskRunner())
def probe_flow(marker: str) -> dict[str, Any]:
    from prefect_ray.context import remote_options

    with remote_options(num_cpus=1):
        # One at a time, so that several land on the same Ray worker process.
        futures, probes = [], []
        for number in range(PROBE_RUNS):
            futures.append(probe_worker.submit(number, marker))
            probes.append(futures[-1].result())
        retried, fails = probe_retried.submit(), probe_fails.submit()
        retried.wait()
        fails.wait()
    return {
        "probes": probes,
        "probe_ids": [f.task_run_id for f in futures],
        "retried": (retried.task_run_id, retried.state.name, retried.result()),
        "fails": (fails.task_run_id, fails.state.name),
    }


def _eventually(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 60) -> Any:
    """Task run states and logs reach the server asynchronously (events, batched logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_tasks_on_ray_reuse_worker_settings_and_client_and_reach_the_prefect_api(ray_session):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    from tests.helpers import task_states, unique

    marker = unique("probe")
    state = probe_flow(marker, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()

    probes = out["probes"]
    assert len(probes) == PROBE_RUNS
    for probe in probes:
        # The task engine and hydrated_context took the worker's cached client.
        assert probe["client"] == probe["context_client"] == probe["flow_run_client"]
        assert probe["api_url"] == get_current_settings().api.url
    by_worker: dict[int, list[dict[str, Any]]] = {}
    for probe in probes:
        by_worker.setdefault(probe["pid"], []).append(probe)
    reused = [runs for runs in by_worker.values() if len(runs) > 1]
    assert reused, f"no two task runs shared a Ray worker: {sorted(by_worker)}"
    for runs in reused:
        assert len({r["settings"] for r in runs}) == 1, "settings rebuilt in the same worker"
        assert len({r["client"] for r in runs}) == 1, "client rebuilt in the same worker"
        assert len({r["builds"] for r in runs}) == 1, "a later task run built them again"
        assert [r["reuses"] for r in runs] == sorted({r["reuses"] for r in runs})

    # Retries, and failures, as before.
    assert out["retried"][1:] == ("Completed", 2)
    assert out["fails"][1] == "Failed"

    # The Prefect UI's view: every task run with its name and final state, and its logs.
    flow_run_id = state.state_details.flow_run_id
    expected = {"probe-worker": ["Completed"] * PROBE_RUNS, "probe-retried": ["Completed"],
                "probe-fails": ["Failed"]}  # fmt: skip
    states = _eventually(lambda: task_states(flow_run_id), lambda s: s == expected)
    assert states == expected

    def read_logs() -> dict[str, set[str]]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=out["probe_ids"]))
            )
        found: dict[str, set[str]] = {}
        for log in logs:
            found.setdefault(str(log.task_run_id), set()).add(log.message)
        return found

    logs = _eventually(read_logs, lambda found: len(found) == PROBE_RUNS)
    for number, task_run_id in enumerate(out["probe_ids"]):
        assert f"{marker} {number}" in logs.get(str(task_run_id), set()), (
            f"task run {number}'s log did not reach the Prefect API"
        )
    with get_client(sync_client=True) as client:
        retried = client.read_task_run(out["retried"][0])
    assert retried.run_count == 2
