"""Flow runs that lost their process: record how they ended, and run them again.

A flow run's state lives in Prefect's database; its work lives in a process. When the process
goes away without reporting (the service was stopped, the process was killed or ran out of
memory, a machine was lost), the run stays `Running` or `Pending` forever and keeps its
deployment's concurrency slot. driftloop closes that gap in three ways:

- **On stop**, the service stops its worker first and marks every run the worker had in flight
  ``Crashed`` with the message "service stopped: ..." (`RunJanitor.stop_in_flight`).
- **On start and every 30 s**, a run of driftloop's work pool that is `Running`, `Pending` or
  `Cancelling` with no live process on this machine is marked ``Crashed`` ("no process: ...")
  (`RunJanitor.crash_zombies`). Marking a run final frees its concurrency slot.
- Prefect's own zombie detection covers runs on other machines: flow runs send heartbeats and
  a proactive automation crashes a run whose heartbeats stop ("no heartbeat: ...", created by
  `driftloop.app.bootstrap`).

A run crashed for one of these reasons was interrupted, not broken, so it is **resumed**: set
back to ``AwaitingRetry``, as the UI's Retry button does, and the worker runs it again with the
same parameters. Cached tasks make the rerun cheap. A run is resumed at most `max_resumes`
times, so work that kills its own process (out of memory) is not retried forever.

The decisions are pure functions (`driftloop.core.interruptions`); `RunJanitor` applies them
through the Prefect API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from driftloop.app.engine_process import fork_name
from driftloop.core import names
from driftloop.core.interruptions import (
    is_interrupted,
    service_stopped_message,
    should_resume,
    zombie_reason,
)

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

Log = Callable[[str], None]

IN_FLIGHT = ("PENDING", "RUNNING", "CANCELLING")
# Prefect labels each flow run with the worker that submitted it.
WORKER_LABEL = "prefect.worker.name"


# --- processes ------------------------------------------------------------------------------
# A run forked by the warm engine (driftloop.app.engine_process) carries the engine's
# environment and command line, and a process name that names its run.
WARM_ENGINE_MODULE = "driftloop.app.engine_process"


def names_the_run(environ: dict[str, str], cmdline: list[str], name: str, run: FlowRun) -> bool:
    """Is a process with this environment, command line and name (`/proc/<pid>/comm`) the
    run's engine?

    A cold engine's environment names its run. A run forked by the warm engine shows the
    environment the engine started with (`/proc/<pid>/environ` is the one a process started
    with, and the run's id came later), so it names itself after its run instead
    (`fork_name`). A process that reused the PID of a run's dead engine has neither.

    Example:
        >>> from uuid import UUID
        >>> from prefect.client.schemas.objects import FlowRun
        >>> run = FlowRun(id=UUID("1b3c5d7e-9f00-4a1b-8c2d-3e4f5a6b7c8d"), flow_id=UUID(int=1))
        >>> names_the_run({}, ["python", "-m", WARM_ENGINE_MODULE], "dl-1b3c5d7e9f00", run)
        True
        >>> names_the_run({}, ["python", "-m", WARM_ENGINE_MODULE], "python", run)
        False
    """
    if environ.get("PREFECT__FLOW_RUN_ID") == str(run.id):
        return True
    return WARM_ENGINE_MODULE in cmdline and name == fork_name(str(run.id))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def run_process_alive(pid: int | None, run: FlowRun) -> bool:
    """Does the run's process live on this machine? Its environment (or, for a run forked by
    the warm engine, its process name) tells it from an unrelated process that reused the
    PID."""
    if pid is None:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return names_the_run(process.environ(), process.cmdline(), _comm(pid), run)
    except psutil.AccessDenied:
        return True  # it exists and is not ours to inspect: do not call it dead
    except psutil.Error:
        return False


def stop_run_processes(run: FlowRun, log: Log) -> None:
    """Stop the run's engine process and whatever it started.

    Prefect starts the engine in a session of its own (so stopping the worker misses it), and
    the local Ray a flow run starts stays in that session. Ray's processes rewrite their
    command line over their environment, so the session finds them where the environment
    (which names the run) cannot.
    """
    from driftloop.app.supervisor import processes_with_env, session_members, stop_processes

    pid = _pid(run)

    def find() -> list[int]:
        found = {p.pid for p in processes_with_env("PREFECT__FLOW_RUN_ID", str(run.id))}
        # The session is the run's while its leader is the run's process, or is gone. A live
        # process with that number that is not the run's got a reused PID: not ours to stop.
        if pid is not None and (
            pid in found or run_process_alive(pid, run) or not psutil.pid_exists(pid)
        ):
            found.update(session_members(pid))
        return sorted(found)

    stop_processes(find, term_signals=1, timeout_s=20.0, name=f"flow run {run.name!r}", log=log)


def _pid(run: FlowRun) -> int | None:
    raw = (run.infrastructure_pid or "").rsplit(":", 1)[-1]
    return int(raw) if raw.isdigit() else None


def _age_s(run: FlowRun, now: datetime) -> float:
    since = run.state.timestamp if run.state and run.state.timestamp else now
    return max(0.0, (now - since).total_seconds())


@dataclass
class RunJanitor:
    """Applies the rules above, through the Prefect API, to the flow runs that this
    machine's worker (`worker_name`) started on the work pool. Runs that workers on other
    machines started are left to the heartbeat automation: their processes are not here."""

    worker_name: str
    pool: str = names.WORK_POOL
    log: Log = print
    max_resumes: int = 2
    pending_grace_s: float = 120.0
    cancel_grace_s: float = 60.0

    def _client(self) -> SyncPrefectClient:
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def _runs(self, client: SyncPrefectClient, state_types: tuple[str, ...]) -> list[FlowRun]:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            WorkPoolFilter,
            WorkPoolFilterName,
        )
        from prefect.client.schemas.objects import StateType

        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType(t) for t in state_types])
                )
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.pool])),
            limit=200,
        )
        # A run is labelled with its worker just after it turns Pending: an unlabelled one was
        # taken by a worker that died at once, here or elsewhere; it is treated as ours.
        return [r for r in runs if r.labels.get(WORKER_LABEL) in (self.worker_name, None)]

    def in_flight(self) -> list[FlowRun]:
        with self._client() as client:
            return self._runs(client, IN_FLIGHT)

    def _crash(self, client: SyncPrefectClient, run: FlowRun, message: str) -> None:
        from prefect.states import Crashed

        # force: a final state is recorded whatever the run's state was; it also releases the
        # deployment's concurrency slot the run held.
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
        self.log(f"  flow run {run.name!r} ({run.id}): Crashed: {message}")

    # --- sweeps ---------------------------------------------------------------------------
    def crash_zombies(self, pending_grace_s: float | None = None) -> list[FlowRun]:
        """Mark Crashed every run in flight whose process is gone; settle stuck cancellations.

        `pending_grace_s` overrides how long a Pending run may wait for its process (0 when
        no worker runs yet, so nobody can be starting one)."""
        grace = self.pending_grace_s if pending_grace_s is None else pending_grace_s
        now = datetime.now(UTC)
        crashed = []
        with self._client() as client:
            for run in self._runs(client, IN_FLIGHT):
                state_type = run.state.type.value if run.state else "PENDING"
                pid = _pid(run)
                alive = run_process_alive(pid, run)
                if state_type == "CANCELLING":
                    self._settle_cancelling(client, run, alive, _age_s(run, now))
                    continue
                reason = zombie_reason(
                    state_type, pid, alive, _age_s(run, now), pending_grace_s=grace
                )
                if reason:
                    # Re-read: the run may have just finished on its own.
                    current = client.read_flow_run(run.id)
                    if current.state and current.state.type.value == state_type:
                        self._crash(client, run, reason)
                        crashed.append(run)
        return crashed

    def _settle_cancelling(
        self, client: SyncPrefectClient, run: FlowRun, alive: bool, age: float
    ) -> None:
        """A cancellation normally completes within seconds. If the process that would have
        done it is gone (its worker died), finish it: stop the run's process, record it."""
        from prefect.states import Cancelled

        if age < self.cancel_grace_s:
            return
        if alive:
            stop_run_processes(run, self.log)
        client.set_flow_run_state(
            run.id,
            Cancelled(message=f"Cancelled by driftloop after {age:.0f}s in Cancelling"),
            force=True,
        )
        self.log(f"  flow run {run.name!r} ({run.id}): Cancelled after {age:.0f}s")

    def resume_interrupted(self, max_age: timedelta = timedelta(days=7)) -> list[FlowRun]:
        """Set interrupted runs back to AwaitingRetry (the UI's Retry), at most
        `max_resumes` times each. Runs whose process still lives are left alone."""
        from prefect.states import AwaitingRetry

        now = datetime.now(UTC)
        resumed = []
        with self._client() as client:
            for run in self._runs(client, ("CRASHED",)):
                message = run.state.message if run.state else None
                if not is_interrupted("CRASHED", message) or run.deployment_id is None:
                    continue
                if run.state and run.state.timestamp and now - run.state.timestamp > max_age:
                    continue
                if run_process_alive(_pid(run), run):
                    continue  # crashed by a late heartbeat, but still working
                resumes = sum(
                    1
                    for s in client.read_flow_run_states(run.id)
                    if (s.message or "").startswith(names.RESUMED_MARK)
                )
                if not should_resume("CRASHED", message, resumes, self.max_resumes):
                    self.log(
                        f"  flow run {run.name!r} ({run.id}) was interrupted again after "
                        f"{resumes} resumes; not resuming it (see its state history)"
                    )
                    continue
                client.set_flow_run_state(
                    run.id,
                    AwaitingRetry(
                        message=f"{names.RESUMED_MARK} ({resumes + 1} of {self.max_resumes}) "
                        f"after: {message}"
                    ),
                    force=True,
                )
                self.log(f"  resumed flow run {run.name!r} ({run.id}), interrupted: {message}")
                resumed.append(run)
        return resumed

    def stop_in_flight(self, runs: list[FlowRun]) -> None:
        """After the worker stopped: stop what is left of each run's processes and record the
        run as Crashed "service stopped", unless it reached a final state on its own."""
        with self._client() as client:
            for run in runs:
                stop_run_processes(run, self.log)
                current = client.read_flow_run(run.id)
                if current.state is None or current.state.is_final():
                    continue
                self._crash(client, run, service_stopped_message(current.state.type.value))
