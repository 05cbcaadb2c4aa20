"""driftloop's worker on a real Prefect server: woken by the pool's Scheduled events (its poll
is set to 60 s here, so only the event can explain a quick pick-up), one interpreter per run
(the engine's parent is the worker itself, or its warm engine), a killed run process recorded
Crashed, and the warm engine: runs forked from it (several at once), cancelled from the UI,
crashed, recycled when the code changes or it idles too long, and bypassed (with the reason
logged) for a run it does not match."""

from __future__ import annotations

import os
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
    forked,
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


def test_every_module_the_warm_engine_preimports_exists():
    """A Prefect upgrade that moves one (some are private: its vendored croniter, anyio's
    backend) would otherwise only print a line in the engine's log and slow every run."""
    import importlib

    from driftloop.app.engine_process import ENGINE_IMPORTS

    for module in ENGINE_IMPORTS:
        importlib.import_module(module)


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


def test_the_zombie_sweep_knows_a_forked_run_by_its_process_name():
    """A cold engine's environment names its run; a run forked from the warm engine has the
    engine's environment and command line, and is known by the name it gives itself."""
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun

    from driftloop.app.engine_process import fork_name
    from driftloop.app.recovery import names_the_run

    run = FlowRun(id=uuid4(), flow_id=uuid4())
    warm = ["python", "-m", "driftloop.app.engine_process", "--report-fd", "5", "flows.training"]
    assert names_the_run({"PREFECT__FLOW_RUN_ID": str(run.id)}, ["python"], "python", run)
    assert not names_the_run({"PREFECT__FLOW_RUN_ID": "other"}, ["python"], "python", run)
    assert names_the_run({}, warm, fork_name(str(run.id)), run)
    assert not names_the_run({}, warm, "python", run)  # the engine itself, or a reused PID
    assert not names_the_run({}, warm, fork_name(str(uuid4())), run)  # another run's process
    assert not names_the_run({}, ["python", "other.py"], fork_name(str(run.id)), run)


def test_the_warm_engine_forks_a_run_that_arrives_during_its_imports(tmp_path: Path):
    """The fork server's protocol, without a Prefect server: a run requested before the flows'
    modules are imported is forked at once (reported before `ready`), and the engine goes on
    importing for later runs. The child runs as its run's engine: this one is refused because
    its hand-off holds a variable that is not Prefect's, exits 1 saying so, and its exit code
    is reported. After the end of its input the engine exits 0."""
    import subprocess

    from driftloop.app.engine_process import request_line

    for name in ("first_flows", "second_flows"):
        marker = tmp_path / f"{name}.imported"
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)])}
    report_r, report_w = os.pipe()
    engine = subprocess.Popen(
        [sys.executable, "-m", "driftloop.app.engine_process", "--report-fd", str(report_w),
         "first_flows", "second_flows"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
        pass_fds=(report_w,),
    )  # fmt: skip
    os.close(report_w)
    run_id = "1b3c5d7e-9f00-4a1b-8c2d-3e4f5a6b7c8d"
    engine.stdin.write(request_line(run_id, {"NOT_PREFECTS": "x"}, str(tmp_path)))
    engine.stdin.close()
    with os.fdopen(report_r) as reports:
        lines = reports.read().splitlines()
    assert engine.wait(timeout=120) == 0
    (forked_line,) = [line for line in lines if line.startswith("forked ")]
    child = int(forked_line.split()[2])
    assert lines == [f"forked {run_id} {child}", "ready", f"exited {child} 1"], lines
    assert "not hand-off variables: ['NOT_PREFECTS']" in engine.stderr.read().decode()
    assert sorted(p.name for p in tmp_path.glob("*.imported")) == [
        "first_flows.imported", "second_flows.imported"
    ]  # fmt: skip


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
    # The worker started it (cold), or forked it from its warm engine; no workspace supervisor
    # in between.
    assert "driftloop.app.worker" in parent or "driftloop.app.engine_process" in parent, parent
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
    if "driftloop.app.engine_process" in " ".join(worker.cmdline()):
        worker = worker.parent()  # forked from the warm engine, which the worker started
    assert "driftloop.app.worker" in " ".join(worker.cmdline())
    assert os.getsid(engine.pid) != os.getsid(worker.pid)
    os.killpg(os.getpgid(worker.pid), signal.SIGKILL)
    run = wait_final(flow_run_id)
    assert run.state.is_completed(), run.state


def test_a_killed_run_process_is_recorded_crashed(pool_and_worker, tmp_path: Path):
    """On the warm path: the run's engine was started before the run."""
    pool, log = pool_and_worker
    flow_run_id, pid = _start_sleeper(pool, tmp_path, warm_log=log)
    assert forked(log, flow_run_id)[1] == pid, log.read_text()
    os.kill(pid, signal.SIGKILL)
    run = wait_final(flow_run_id)
    assert run.state.is_crashed(), run.state


# --- warm engines ---------------------------------------------------------------------------
def test_runs_are_forked_from_the_warm_engine_each_in_a_process_of_its_own(pool_and_worker):
    """Runs one after the other, and three at once (what a promotion starts): each is a child
    of the same warm engine, a process of its own in a session of its own, and no engine is
    started for them."""
    from prefect.client.orchestration import get_client

    pool, log = pool_and_worker
    deployment_id = deploy(pool, "tests.worker_flows.engine_facts", warm_log=log)
    started = warm_engines_started(log)
    engine = started[-1]  # the one that imports the deployment's module
    runs = [run_and_wait(deployment_id) for _ in range(2)]
    with get_client(sync_client=True) as client:
        burst = [client.create_flow_run_from_deployment(deployment_id).id for _ in range(3)]
    runs += [wait_final(run_id) for run_id in burst]
    facts = []
    for run in runs:
        assert run.state.is_completed(), run.state
        facts.append(run.state.result())
        assert forked(log, run.id) == (engine, facts[-1]["pid"]), log.read_text()
    assert {f["ppid"] for f in facts} == {engine}
    assert len({f["pid"] for f in facts}) == len(runs)
    assert warm_engines_started(log) == started  # none started for the runs


def test_cancelling_a_warm_run_from_the_ui_cancels_it(pool_and_worker, tmp_path: Path):
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    from driftloop.app.recovery import run_process_alive

    pool, log = pool_and_worker
    flow_run_id, pid = _start_sleeper(pool, tmp_path, warm_log=log)
    assert forked(log, flow_run_id)[1] == pid, log.read_text()
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
    first = forked(log, run.id)
    assert first is not None, log.read_text()  # warm: the engine had imported the module
    engine = first[0]
    module.write_text(source.format(2))
    stat = module.stat()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    wait_for_log(log, rf"Recycling warm engine {engine}: the flows' code changed", worker)
    run = run_and_wait(deployment_id)
    assert run.state.result() == 2, log.read_text()
    second = forked(log, run.id)
    assert second is None or second[0] != engine  # a new engine or a cold one, not the old


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
        f"Flow run {run.id} starts in a cold engine: the run differs from the warm engine "
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
    assert forked(log, flow_run_id)[1] == pid, log.read_text()
    stop_worker(worker)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    time.sleep(2)  # a crash report, had there been one, would have arrived
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.is_running(), state
