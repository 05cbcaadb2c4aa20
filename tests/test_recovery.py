"""Runs that lost their process, against a real Prefect server and real processes.

Each test makes a deployment (with a concurrency limit of 1) on a work pool of its own, takes
a flow run through Pending (which takes the deployment's slot) to Running, and gives it a
process: a real one, or the PID of one that has exited. The janitor then works through the
Prefect API as it does in `driftloop up`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from driftloop.app.recovery import RunJanitor
from driftloop.core import names
from tests.helpers import unique

WORKER = "driftloop-test-worker"


def make_deployment(concurrency_limit: int | None = 1) -> tuple[str, object]:
    """A deployment of its own, on a work pool of its own; (pool name, deployment id)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = unique("pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name(unique("flow"))
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=unique("deployment"),
            work_pool_name=pool,
            entrypoint="flows.training.train",
            concurrency_limit=concurrency_limit,
            tags=[names.TAG_DRIFTLOOP],
        )
    return pool, deployment_id


@pytest.fixture
def deployment(prefect_server):
    return make_deployment(concurrency_limit=1)


def in_flight(deployment, pid: int | None, worker: str | None = WORKER, state: str = "RUNNING"):
    """A flow run of the deployment, Pending (holding the slot) then `state`."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    _, deployment_id = deployment
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id)
        assert client.set_flow_run_state(run.id, Pending()).state.is_pending()
        if worker:
            client.update_flow_run_labels(run.id, {"prefect.worker.name": worker})
        if pid is not None:
            client.update_flow_run(run.id, infrastructure_pid=str(pid))
        if state == "RUNNING":
            assert client.set_flow_run_state(run.id, Running()).state.is_running()
        return client.read_flow_run(run.id)


def state_of(run):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run.id).state


def active_slots(deployment) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployment(deployment[1])
    return found.global_concurrency_limit.active_slots


def exited_pid() -> int:
    """The PID of a process that has come and gone."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def engine_like(flow_run_id, with_child: bool = False) -> subprocess.Popen:
    """A process that looks like a flow-run engine: its own session, the run's id in its
    environment, optionally a child (as Ray would be) in the same session."""
    code = "import time; time.sleep(600)"
    if with_child:
        code = (
            "import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "time.sleep(600)"
        )
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": str(flow_run_id)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


def janitor(deployment, **kwargs) -> RunJanitor:
    return RunJanitor(worker_name=WORKER, pool=deployment[0], log=lambda _: None, **kwargs)


def test_a_zombie_is_crashed_frees_its_slot_and_is_resumed_at_most_twice(deployment):
    run = in_flight(deployment, exited_pid())
    assert active_slots(deployment) == 1
    sweeper = janitor(deployment)

    crashed = sweeper.crash_zombies()
    assert [r.id for r in crashed] == [run.id]
    state = state_of(run)
    assert state.is_crashed()
    assert state.message.startswith(f"{names.CRASH_NO_PROCESS}: the run was Running")
    assert active_slots(deployment) == 0  # the deployment can run again

    for attempt in (1, 2):
        resumed = sweeper.resume_interrupted()
        assert [r.id for r in resumed] == [run.id]
        state = state_of(run)
        assert state.name == "AwaitingRetry"
        assert state.message.startswith(f"{names.RESUMED_MARK} ({attempt} of 2)")
        # It runs again, and dies again.
        from prefect.client.orchestration import get_client
        from prefect.states import Pending, Running

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Pending())
            client.set_flow_run_state(run.id, Running())
        assert sweeper.crash_zombies()
    assert sweeper.resume_interrupted() == []
    assert state_of(run).is_crashed()


def test_a_run_with_a_live_process_is_left_alone(deployment):
    run = in_flight(deployment, None)
    process = engine_like(run.id)
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, infrastructure_pid=str(process.pid))
        assert janitor(deployment).crash_zombies() == []
        assert state_of(run).is_running()
    finally:
        process.kill()
        process.wait()
    # The same PID must name the same run: a process of another run does not keep it alive.
    other = engine_like("another-run")
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, infrastructure_pid=str(other.pid))
        assert [r.id for r in janitor(deployment).crash_zombies()] == [run.id]
    finally:
        other.kill()
        other.wait()


def test_runs_of_workers_on_other_machines_are_left_alone(deployment):
    run = in_flight(deployment, exited_pid(), worker="a-worker-elsewhere")
    assert janitor(deployment).crash_zombies() == []
    assert state_of(run).is_running()


def test_a_pending_run_without_a_process_gets_a_grace_period(deployment):
    run = in_flight(deployment, None, state="PENDING")
    assert janitor(deployment, pending_grace_s=600).crash_zombies() == []
    assert [r.id for r in janitor(deployment).crash_zombies(pending_grace_s=0)] == [run.id]
    assert "no process was ever started" in state_of(run).message


def test_stopping_the_service_records_runs_in_flight_and_stops_their_processes(deployment):
    from driftloop.app.supervisor import session_alive

    run = in_flight(deployment, None)
    process = engine_like(run.id, with_child=True)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, infrastructure_pid=str(process.pid))
    time.sleep(0.5)  # let the child start
    sweeper = janitor(deployment)
    sweeper.stop_in_flight(sweeper.in_flight())
    process.wait(timeout=30)
    assert not session_alive(process.pid)  # the child went with it
    state = state_of(run)
    assert state.is_crashed()
    assert state.message.startswith(f"{names.CRASH_SERVICE_STOPPED}: driftloop was stopped")
    assert active_slots(deployment) == 0


def test_a_cancellation_nobody_finishes_is_finished(deployment):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    run = in_flight(deployment, None)
    process = engine_like(run.id)
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, infrastructure_pid=str(process.pid))
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    assert janitor(deployment, cancel_grace_s=600).crash_zombies() == []
    assert state_of(run).name == "Cancelling"
    janitor(deployment, cancel_grace_s=0).crash_zombies()
    assert process.wait(timeout=30) is not None
    assert state_of(run).is_cancelled()


def heartbeat(run) -> None:
    """What a flow run's engine sends while it runs (the run's tags are related resources)."""
    from prefect.events import emit_event

    emit_event(
        event="prefect.flow-run.heartbeat",
        resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
        related=[{"prefect.resource.id": f"prefect.tag.{names.TAG_DRIFTLOOP}",
                  "prefect.resource.role": "tag"}],
    )  # fmt: skip


def test_prefects_zombie_detection_crashes_a_run_whose_heartbeats_stop(prefect_server):
    """The automation driftloop creates at start (Prefect's documented recipe), here with 5 s
    heartbeats: a run whose heartbeats stop is crashed; one that keeps sending them is not;
    the crash counts as an interruption, so the run is resumed."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    from driftloop.app.bootstrap import ensure_zombie_automation

    name = unique("zombies")
    ensure_zombie_automation(heartbeat_s=5, missed=2, name=name)
    ensure_zombie_automation(heartbeat_s=5, missed=2, name=name)  # idempotent
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(name)) == 1
    deployment = make_deployment(concurrency_limit=None)
    try:
        silent = in_flight(deployment, None, worker="a-worker-elsewhere")
        alive = in_flight(deployment, None, worker="a-worker-elsewhere")
        heartbeat(silent)
        deadline = time.monotonic() + 60
        while not state_of(silent).is_crashed():
            assert time.monotonic() < deadline, state_of(silent)
            heartbeat(alive)
            time.sleep(3)
        assert state_of(silent).message.startswith(f"{names.CRASH_NO_HEARTBEAT}: ")
        assert state_of(alive).is_running()
        resumer = RunJanitor(worker_name="a-worker-elsewhere", pool=deployment[0],
                             log=lambda _: None)  # fmt: skip
        assert [r.id for r in resumer.resume_interrupted()] == [silent.id]
    finally:
        Automation.read(name=name).delete()
