"""The Ray head `driftloop up` starts (`ray-head`), for real and as the stack defines it.

Flow runs attach to it through the RAY_ADDRESS the worker passes on (a job per run, on the
head's workers, which import the checkout); a head killed outright is restarted, leaves no
orphan, and takes the flow runs attached to it along; stopping the supervisor leaves no Ray
process. A caller's RAY_ADDRESS wins: then no head is started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from driftloop.app.stack import RAY_HEAD, _components, ray_state_dirs, stack_env
from driftloop.app.supervisor import (
    SERVICE_ID_ENV,
    Status,
    Supervisor,
    processes_using,
    session_members,
)
from driftloop.core.settings import PROJECT_ROOT, DriftloopSettings
from flows.task_runners import ray_temp_path
from tests.conftest import PREFECT_PORT, free_port

# Two flow runs in one process, one after the other: each is a Ray job of its own (the runner
# connects on the first task and disconnects when the run ends). The task, defined in
# __main__ and so shipped by value, reports where it ran and imports a module of the checkout
# by name, as the flows' tasks are imported on Ray's workers. The second run's task writes
# that report to a file and then works on (sleeps): it is attached when the head is killed.
FLOW_RUNS = textwrap.dedent(
    """
    import json, os, sys, time

    import ray
    from prefect import flow, task

    from flows.task_runners import DriftloopRayTaskRunner, current_runner

    @task
    def where(hold):
        import flows.task_runners as checkout_module

        report = {"pid": os.getpid(), "sid": os.getsid(0),
                  "job": ray.get_runtime_context().get_job_id(),
                  "module": checkout_module.__file__}
        if hold:
            with open(hold + ".part", "w") as handle:
                json.dump(report, handle)
            os.replace(hold + ".part", hold)
            time.sleep(600)
        return report

    @flow(task_runner=DriftloopRayTaskRunner())
    def attach(hold=None):
        ran = where.submit(hold).result()
        return {**ran, "mode": current_runner().mode}

    print("RESULT " + json.dumps(attach()), flush=True)
    attach(sys.argv[1])
    """
)


def _settings(tmp_path: Path) -> DriftloopSettings:
    # A state folder of its own: stopping sweeps whatever holds files in its Ray dir, which
    # must never be the Ray of the test session (conftest's `ray_session`).
    return DriftloopSettings(
        home=tmp_path / "state", prefect_port=PREFECT_PORT, ray_port=free_port()
    )


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ray_processes(settings: DriftloopSettings, service_id: str, sessions: set[int]) -> list[str]:
    """Live processes of this head: in one of its sessions, carrying the service id, holding
    files under its Ray dirs, or naming them on their command line (the GCS and the raylet
    do)."""
    dirs = ray_state_dirs(settings)
    holding = set(processes_using(dirs))
    found = []
    for process in psutil.process_iter():
        try:
            if not _alive(process):
                continue
            cmdline = " ".join(process.cmdline())
            if (
                process.pid in holding
                or os.getsid(process.pid) in sessions
                or any(d in cmdline for d in dirs)
                or process.environ().get(SERVICE_ID_ENV) == service_id
            ):
                found.append(f"{process.pid} {cmdline[:150]}")
        except (OSError, psutil.Error):
            continue
    return found


def _watch_until(supervisor: Supervisor, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the supervisor did not get there in time"
        supervisor.watch()
        time.sleep(0.2)


def test_flow_runs_attach_to_the_head_which_restarts_and_stops_without_leftovers(
    prefect_server, tmp_path
):
    settings = _settings(tmp_path)
    env = stack_env(settings)
    env.pop("RAY_ADDRESS", None)  # the caller names no cluster: the stack starts its head
    components = _components(settings, env)
    head = components[RAY_HEAD]
    # What the worker's flow runs inherit (without the test session's RAY_AUTH_MODE, which a
    # user's shell does not set either).
    flow_env = {k: v for k, v in components["prefect-worker"].env.items() if k != "RAY_AUTH_MODE"}
    assert flow_env["RAY_ADDRESS"] == settings.ray_address
    assert "RAY_ADDRESS" not in head.env

    service_id = uuid.uuid4().hex
    lines: list[str] = []
    supervisor = Supervisor(settings.run_dir, service_id=service_id, log=lines.append)
    sessions: set[int] = set()
    flows: subprocess.Popen[str] | None = None
    try:
        supervisor.start(head)
        assert head.pid is not None
        sessions.add(head.pid)
        supervisor.wait_healthy(head, 120)

        # Two flow runs attach to the head: each a job of its own, on the head's workers.
        held = tmp_path / "held.json"
        flow_log = tmp_path / "flows.log"
        with flow_log.open("w") as stderr:
            flows = subprocess.Popen(
                [sys.executable, "-c", FLOW_RUNS, str(held)], env=flow_env, cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while not held.exists():
            assert flows.poll() is None, flow_log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the second flow run's task did not start"
            time.sleep(0.2)
        results = [json.loads(held.read_text())]
        assert flows.stdout is not None
        first_run = flows.stdout.readline()
        assert first_run.startswith("RESULT "), first_run
        results.insert(0, json.loads(first_run[len("RESULT ") :]))
        assert results[0]["mode"] == f"cluster at {settings.ray_address}"
        for result in results:
            assert result["sid"] == head.pid, "the task did not run on the head's workers"
            assert Path(result["module"]).is_relative_to(PROJECT_ROOT)
        assert results[0]["job"] != results[1]["job"]
        # Fresh workers for each job: a new flow run imports the checkout as it is then.
        assert results[0]["pid"] != results[1]["pid"]
        # The flow runs started no Ray of their own (it would have a session of its own).
        assert len(list(settings.ray_dir.glob("session_2*"))) == 1
        assert not (Path(os.environ["HOME"]) / ".ray").exists(), "Ray wrote to ~/.ray"

        # Killed outright, the head is restarted, and nothing of the old one lives on; the
        # flow run still attached to it is stopped (it would wait for its task for ever).
        first = head.pid
        old = session_members(first)
        assert len(old) > 3, old  # ray start, its GCS, raylet, ...
        os.kill(first, signal.SIGKILL)
        _watch_until(supervisor, lambda: head.status is Status.RUNNING and head.pid != first, 120)
        assert head.pid is not None
        sessions.add(head.pid)
        assert not [pid for pid in old if psutil.pid_exists(pid) and _alive(psutil.Process(pid))]
        # Stopped, not left waiting for its task for ever: it ends within seconds. (Its exit
        # code is not the point: how a Ray driver ends on a lost head varies, and a clean-clone
        # run once saw 0.)
        flows.wait(timeout=10)
        text = "\n".join(lines)
        assert f"{RAY_HEAD} exited unexpectedly (code -9)" in text
        assert "stopped flow runs attached to the dead Ray head" in text
        assert f"{RAY_HEAD} is healthy again" in text
        assert len(list(settings.ray_dir.glob("session_2*"))) == 2
    finally:
        if flows is not None and flows.poll() is None:
            flows.kill()
        before_stop = len(lines)
        supervisor.stop_all(state_dirs=ray_state_dirs(settings))
        leftovers = _ray_processes(settings, service_id, sessions)
        ray_temp_path(settings.ray_dir).unlink(missing_ok=True)  # the short link, if any
    assert leftovers == [], leftovers
    # The head stopped on SIGTERM, in time; the last-resort sweep found nothing.
    assert lines[before_stop:] == [f"  stopped {RAY_HEAD}"]


def test_a_cluster_named_by_the_caller_wins_and_no_head_is_started(tmp_path):
    settings = _settings(tmp_path)
    try:
        _check_components(settings)
    finally:
        ray_temp_path(settings.ray_dir).unlink(missing_ok=True)  # the short link, if any


def _check_components(settings: DriftloopSettings) -> None:
    env = {**stack_env(settings), "RAY_ADDRESS": "10.0.0.5:6379"}
    components = _components(settings, env)
    assert RAY_HEAD not in components
    assert components["prefect-worker"].env["RAY_ADDRESS"] == "10.0.0.5:6379"

    env.pop("RAY_ADDRESS")
    components = _components(settings, env)
    head = components[RAY_HEAD]
    assert components["prefect-worker"].env["RAY_ADDRESS"] == f"127.0.0.1:{settings.ray_port}"
    # No token (it would be written to ~/.ray), no telemetry, no drain wait on SIGTERM.
    assert head.env["RAY_AUTH_MODE"] == "disabled"
    assert head.env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert head.env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "0"
    assert head.port == settings.ray_port
    assert head.cwd == PROJECT_ROOT
