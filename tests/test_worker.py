"""driftloop's worker on a real Prefect server: woken by the pool's Scheduled events (its poll
is set to 60 s here, so only the event can explain a quick pick-up), one interpreter per run
(the engine's parent is the worker itself), a killed run process recorded Crashed, and warm
engines: started before their runs, cancelled from the UI, crashed, recycled when the code
changes or they idle too long, and bypassed (with the reason logged) for a run they do not
match."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from driftloop.app.worker import engine_command, is_pool_scheduled_event
from driftloop.core.settings import PROJECT_ROOT
from tests.warm_worker import (
    WARM_STARTED,
    deploy,
    run_and_wait,
    stop_worker,
    wait_final,
    wait_for_log,
    warm_engines_started,
)


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
    # What the warm engines' starter implements and builds.
    start = inspect.signature(_prefect_runner.ProcessStarter.start).parameters
    missing = [p for p in _prefect_runner.PROCESS_STARTER_PARAMETERS if p not in start]
    assert not missing, f"ProcessStarter.start lost {missing}: update _prefect_runner.py"
    fields = _prefect_runner.ProcessHandle.__dataclass_fields__
    missing = [f for f in _prefect_runner.PROCESS_HANDLE_FIELDS if f not in fields]
    assert not missing, f"ProcessHandle lost {missing}: update _prefect_runner.py"
    assert callable(_prefect_runner.isolated_termination_scope)


def test_the_code_fingerprint_covers_the_tasks_a_flow_imports():
    """An edit to a task module (not the flow's own package) changes the fingerprint that
    recycles idle engines. (The edit is a new modification time, put back afterwards.)"""
    from driftloop.app.warm_engines import WarmEngines

    task_module = PROJECT_ROOT / "tasks" / "fit_model.py"
    before = WarmEngines.code_of(("flows.training",))
    stat = task_module.stat()
    try:
        os.utime(task_module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert WarmEngines.code_of(("flows.training",)) != before
    finally:
        os.utime(task_module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert WarmEngines.code_of(("flows.training",)) == before


def test_a_warm_engine_is_its_runs_process_only_if_it_started_before_the_hand_over():
    """The zombie sweep's rule: a cold engine's environment names its run; a warm engine's
    cannot, so its start time must precede the run's current state (a reused PID starts
    later), also for a resumed run, whose first start was long before its engine's."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Pending, Running

    from driftloop.app.recovery import names_the_run

    first = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    warm = ["python", "-m", "driftloop.app.engine_process", "flows.training"]
    run = FlowRun(id=uuid4(), flow_id=uuid4(), start_time=first, state=Running(timestamp=first))
    assert names_the_run({"PREFECT__FLOW_RUN_ID": str(run.id)}, ["python"], 0.0, run)
    assert not names_the_run({"PREFECT__FLOW_RUN_ID": "other"}, ["python"], 0.0, run)
    assert names_the_run({}, warm, first.timestamp() - 60, run)
    assert not names_the_run({}, warm, first.timestamp() + 1, run)  # a reused PID
    assert not names_the_run({}, ["python", "other.py"], first.timestamp() - 60, run)
    # Resumed an hour later (its start_time stays the first attempt's), in a warm engine
    # started a minute before the hand-over: Pending, then Running.
    resumed = first + timedelta(hours=1)
    for state in (Pending(timestamp=resumed), Running(timestamp=resumed + timedelta(seconds=5))):
        again = run.model_copy(update={"state": state})
        assert names_the_run({}, warm, resumed.timestamp() - 60, again)
        assert not names_the_run({}, warm, resumed.timestamp() + 60, again)


def test_an_engine_given_its_input_stops_pre_importing(tmp_path: Path):
    """A run handed over while the engine still pre-imports takes it from there: the modules
    not imported yet are left to the run (here the input is the end of input, which the
    engine then reads as "not needed" and exits 0)."""
    import subprocess

    for name in ("first_flows", "second_flows"):
        marker = tmp_path / f"{name}.imported"
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)])}

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "driftloop.app.engine_process", "first_flows", "second_flows"],
            stdin=subprocess.PIPE, env=env, cwd=tmp_path,
        )  # fmt: skip

    engine = start()
    engine.stdin.close()  # before Prefect's own imports are done: nothing else is imported
    assert engine.wait(timeout=120) == 0
    assert sorted(p.name for p in tmp_path.glob("*.imported")) == []
    # Left alone, the same engine imports both, then waits for its input.
    engine = start()
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.imported"))) < 2:
        assert time.monotonic() < deadline and engine.poll() is None
        time.sleep(0.2)
    engine.stdin.close()
    assert engine.wait(timeout=60) == 0


def test_the_engine_runs_on_the_workers_own_interpreter():
    assert engine_command("python -m prefect.engine") == f"{sys.executable} -m prefect.engine"
    assert engine_command("/opt/py -m prefect.engine") == "/opt/py -m prefect.engine"
    assert engine_command(None) is None
    assert is_pool_scheduled_event("prefect.flow-run.Scheduled")
    assert not is_pool_scheduled_event("prefect.flow-run.Running")


@pytest.fixture
def pool_and_worker(start_worker):
    """A work pool and `driftloop worker` serving it, with its default warm engine."""
    pool, log, _ = start_worker()
    return pool, log


def _start_sleeper(
    pool: str, folder: Path, warm_log: Path | None = None, **parameters
) -> tuple[str, int]:
    """Start `tests.worker_flows.sleeper` from a deployment on the pool (see `_deploy` for
    `warm_log`); once its flow runs, return the flow run's id and its engine's PID."""
    from prefect.client.orchestration import get_client

    deployment_id = deploy(pool, "tests.worker_flows.sleeper", warm_log=warm_log)
    pid_file = folder / "pid"
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"pid_file": str(pid_file), **parameters}
        )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    return flow_run.id, int(pid_file.read_text())


def test_a_run_is_picked_up_on_its_event_in_one_interpreter(pool_and_worker):
    from prefect.client.orchestration import get_client

    pool, log = pool_and_worker
    deployment_id = deploy(pool, "tests.worker_flows.parent_of_engine")
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    run = wait_final(flow_run.id)
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

    pool, _ = pool_and_worker
    flow_run_id, pid = _start_sleeper(pool, tmp_path, seconds=6.0)
    engine = psutil.Process(pid)
    worker = engine.parent()
    assert "driftloop.app.worker" in " ".join(worker.cmdline())
    assert os.getsid(engine.pid) != os.getsid(worker.pid)
    os.killpg(os.getpgid(worker.pid), signal.SIGKILL)
    run = wait_final(flow_run_id)
    assert run.state.is_completed(), run.state


def test_a_killed_run_process_is_recorded_crashed(pool_and_worker, tmp_path: Path):
    """On the warm path: the run's engine was started before the run."""
    pool, log = pool_and_worker
    flow_run_id, pid = _start_sleeper(pool, tmp_path, warm_log=log)
    assert pid in warm_engines_started(log), log.read_text()
    os.kill(pid, signal.SIGKILL)
    run = wait_final(flow_run_id)
    assert run.state.is_crashed(), run.state


# --- warm engines ---------------------------------------------------------------------------
def test_runs_start_in_engines_started_before_them(pool_and_worker):
    """Each run gets a warm engine of its own (a new one is started after each hand-over), and
    the zombie sweep sees a warm engine as its run's live process."""
    pool, log = pool_and_worker
    deployment_id = deploy(pool, "tests.worker_flows.engine_facts", warm_log=log)
    pids = []
    for _ in range(2):
        started = warm_engines_started(log)
        run = run_and_wait(deployment_id)
        assert run.state.is_completed(), run.state
        pid = run.state.result()["pid"]
        assert pid in started, (pid, started)  # started before the run was created
        assert f"Flow run {run.id} starts in warm engine {pid}" in log.read_text()
        pids.append(pid)
        deadline = time.monotonic() + 30  # its replacement starts a few seconds later
        while len(warm_engines_started(log)) == len(started):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    assert pids[0] != pids[1]


def test_cancelling_a_warm_run_from_the_ui_cancels_it(pool_and_worker, tmp_path: Path):
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    from driftloop.app.recovery import run_process_alive

    pool, log = pool_and_worker
    flow_run_id, pid = _start_sleeper(pool, tmp_path, warm_log=log)
    assert pid in warm_engines_started(log), log.read_text()
    with get_client(sync_client=True) as client:
        assert run_process_alive(pid, client.read_flow_run(flow_run_id))  # not a zombie
        client.set_flow_run_state(flow_run_id, Cancelling(), force=True)  # the UI's Cancel
    run = wait_final(flow_run_id, timeout=60)
    assert run.state.is_cancelled(), run.state
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_code_change_recycles_the_warm_engines(start_worker, tmp_path: Path, monkeypatch):
    """An edited flow module is what the next run executes, never the module the idle engine
    imported before the edit."""
    package = tmp_path / "editable_flows"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "versioned.py"
    source = (
        "from prefect import flow\n\n\n"
        "@flow(name='worker-versioned', persist_result=True)\n"
        "def versioned() -> int:\n    return {}\n"
    )
    module.write_text(source.format(1))
    monkeypatch.syspath_prepend(str(tmp_path))  # this process imports it to deploy it
    pool, log, worker = start_worker(env={"PYTHONPATH": str(tmp_path)})
    deployment_id = deploy(pool, "editable_flows.versioned.versioned")
    wait_for_log(log, r"pre-imports editable_flows\.versioned", worker)  # knows the deployment
    run = run_and_wait(deployment_id)
    assert run.state.result() == 1
    assert f"Flow run {run.id} starts in warm engine" in log.read_text()

    # The engine that replaced the one the run took (started after it, so a run that ends
    # before its replacement starts is not mistaken for the idle engine).
    (used,) = re.findall(rf"Flow run {run.id} starts in warm engine (\d+)", log.read_text())
    replacement = rf"Warm engine (?!{used}\b)\d+ started \(pre-imports editable_flows"
    wait_for_log(log, replacement, worker)
    idle = warm_engines_started(log)[-1]
    module.write_text(source.format(2))
    stat = module.stat()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    wait_for_log(log, rf"Recycling warm engine {idle}: the flows' code changed", worker)
    run = run_and_wait(deployment_id)
    assert run.state.result() == 2, log.read_text()


def test_a_run_the_engines_do_not_match_starts_cold_and_says_why(start_worker):
    """A deployment with an environment of its own starts cold, naming the variable (not its
    value); the engines then learn its spec, and its next run is warm."""
    pool, log, worker = start_worker()
    deployment_id = deploy(
        pool, "tests.worker_flows.engine_facts",
        job_variables={"env": {"DRIFTLOOP_TEST_SECRET": "s3cr3t"}}, warm_log=log,
    )  # fmt: skip
    run = run_and_wait(deployment_id, variable="DRIFTLOOP_TEST_SECRET")
    assert run.state.result()["value"] == "s3cr3t"
    text = log.read_text()
    assert (
        f"Flow run {run.id} starts in a cold engine: the run differs from the idle engines "
        "in the environment (DRIFTLOOP_TEST_SECRET)"
    ) in text, text
    assert "s3cr3t" not in text
    wait_for_log(log, r"starts in a cold engine[\s\S]*" + WARM_STARTED.pattern, worker)
    run = run_and_wait(deployment_id, variable="DRIFTLOOP_TEST_SECRET")
    assert run.state.result()["value"] == "s3cr3t"
    assert f"Flow run {run.id} starts in warm engine" in log.read_text()


def test_idle_engines_are_recycled_and_none_outlives_the_worker(start_worker):
    import psutil

    _, log, worker = start_worker("--warm-idle-s", "2")
    first = warm_engines_started(log)[0]
    wait_for_log(log, rf"Recycling warm engine {first}: idle for 2s", worker)
    wait_for_log(log, r"Warm engine (?!{first})\d+ started".replace("{first}", str(first)),
                 worker)  # fmt: skip
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
    stop_worker(worker)
    alive = [pid for pid in warm_engines_started(log) if psutil.pid_exists(pid)]
    assert not alive, log.read_text()  # the worker waited for them


def test_no_warm_engines_means_cold_runs(start_worker):
    pool, log, _ = start_worker("--warm-engines=0")
    run = run_and_wait(deploy(pool, "tests.worker_flows.engine_facts"))
    assert run.state.is_completed(), run.state
    assert f"Flow run {run.id} starts in a cold engine: warm engines are off" in log.read_text()
    assert not warm_engines_started(log)


def test_stopping_the_worker_kills_its_warm_runs_as_prefects_cold_path_does(
    start_worker, tmp_path: Path
):
    """A worker stopped cleanly (SIGTERM) ends the engines of its runs at once, as Prefect's
    own starter does (anyio kills a process whose wait is cancelled), so a run cannot record
    a crash of its own (with Ray attached, a SIGTERM would exit through Ray's handler as
    SystemExit): it stays Running, and the service records it "service stopped" and
    resumes it (tests/test_stack.py)."""
    import psutil
    from prefect.client.orchestration import get_client

    pool, log, worker = start_worker()
    flow_run_id, pid = _start_sleeper(pool, tmp_path, warm_log=log)
    assert pid in warm_engines_started(log), log.read_text()
    stop_worker(worker)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    time.sleep(2)  # a crash report, had there been one, would have arrived
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.is_running(), state
