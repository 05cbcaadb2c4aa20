"""driftloop's worker: Prefect's process worker, woken by events and starting one interpreter.

A stock process worker (Prefect 3.8) reaches a new flow run late on two counts:

- It **polls** for due runs every `PREFECT_WORKER_QUERY_SECONDS`. This worker also subscribes
  to the server's `prefect.flow-run.Scheduled` (and `AwaitingRetry`) events for its work pool
  and polls at once when one arrives, so a run an automation creates is picked up at once.
  The poll stays, slower, as the fallback (a missed event, a reconnect, a run scheduled for
  later).
- With no `command` in the job configuration it starts **two** cold interpreters per run: a
  workspace supervisor, which then starts `python -m prefect.engine`. Given a command, Prefect
  starts the engine directly (its `EngineCommandStarter`). The pool's base job template says
  `python -m prefect.engine` (`ENGINE_COMMAND`, set by `driftloop.app.bootstrap`), which a
  stock worker also honours; this worker runs it with its own interpreter, so `python` need
  not be first on the PATH.

Each run's engine gets a session of its own (as Prefect's workspace path gives it, and its
command path does not), so a run outlives its worker: a worker killed or restarted does not
take the runs in flight with it. Where it can, it forks the run's process from its warm
engine, which has imported Prefect and the flows already (`driftloop.app.warm_engines`).
Everything else is Prefect's process worker: each run in its own process, cancellation from
the UI, a killed run process reported Crashed.

It is a worker type of its own (`driftloop`, Prefect's documented extension point: a
`ProcessWorker` subclass), and driftloop's work pool has that type. Its job template is the
process worker's, so a stock `prefect worker start --type process` can still serve the pool
(Prefect logs a type mismatch).

Run it as `driftloop worker` (or `python -m driftloop.app.worker --pool driftloop-process`).

Example:
    >>> is_pool_scheduled_event("prefect.flow-run.Scheduled")
    True
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from prefect.logging import get_logger
from prefect.settings import PREFECT_WORKER_QUERY_SECONDS
from prefect.workers.process import ProcessWorker, ProcessWorkerResult

from driftloop.app.warm_engines import (
    EngineSpec,
    WarmEngines,
    WarmEngineStarter,
    entrypoint_module,
    split_environment,
)
from driftloop.core import names
from driftloop.core.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import TaskGroup, TaskStatus
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.workers.process import ProcessJobConfiguration

    from driftloop.app._prefect_runner import ProcessStarter

# The engine command the pool's job template gives every run (one interpreter per run).
ENGINE_COMMAND = "python -m prefect.engine"
WORKER_TYPE = "driftloop"
# A run becomes due for this pool when it is scheduled, or set back to run again (a resumed
# run, the UI's Retry). A run waiting for a concurrency slot is due only seconds later, when
# the server reschedules it: the regular poll finds it.
WAKE_EVENTS = ("prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry")
# The event can arrive a moment before the run is readable as due; a poll right after it may
# find nothing, so a wake polls again after these pauses (seconds).
WAKE_POLLS_S = (0.0, 0.3, 1.0)
LOGGER = get_logger("driftloop.worker")
RESUBSCRIBE_AFTER_S = 30.0
# How often the warm engine is checked (exited, idle too long, code or deployments changed)
# and replaced if need be.
MAINTAIN_ENGINES_S = 2.0


def is_pool_scheduled_event(event: str) -> bool:
    """Whether an event announces a run due on a work pool (what wakes the worker)."""
    return event in WAKE_EVENTS


def run_environment(job_env: Mapping[str, str | None]) -> dict[str, str | None]:
    """A run's environment as Prefect's `EngineCommandStarter` builds it: this process's, then
    the job's, then Prefect's settings as set here (they win)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings().to_environment_variables(exclude_unset=True)
    return {**os.environ, **job_env, **settings}


def engine_command(command: str | None) -> str | None:
    """The pool's engine command run with this interpreter: `python -m prefect.engine` becomes
    `<sys.executable> -m prefect.engine`; any other command is left as the pool says."""
    if command is None:
        return None
    argv = shlex.split(command)
    if argv[:1] == ["python"]:
        argv[0] = sys.executable
    return shlex.join(argv)


class DriftloopWorker(ProcessWorker):
    """A process worker that wakes on the work pool's `Scheduled` events.

    Example:
        >>> DriftloopWorker.type
        'driftloop'
    """

    type: ClassVar[str] = WORKER_TYPE

    _description: ClassVar[str] = (
        "Prefect's process worker, woken by the server's events for its work pool and starting "
        "the engine in one interpreter."
    )

    def __init__(
        self,
        *args: Any,
        warm_engines: int = 1,
        warm_idle_s: float = 900.0,
        warm_imports: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._wake_group: TaskGroup | None = None
        self.engines = WarmEngines(warm_engines, warm_idle_s, warm_imports)

    async def setup(self) -> None:
        """Prefect's worker set-up, then the event subscription that wakes it and the loop
        that keeps engines warm."""
        await super().setup()
        self._wake_group = anyio.create_task_group()
        await self._wake_group.__aenter__()
        self._wake_group.start_soon(self._wake_on_scheduled_runs)
        if self.engines.enabled:
            self._wake_group.start_soon(self._keep_engines_warm)

    async def teardown(self, *exc_info: Any) -> None:
        """Stop listening for events, retire the idle engines, then Prefect's teardown."""
        if self._wake_group is not None:
            self._wake_group.cancel_scope.cancel()
            await self._wake_group.__aexit__(None, None, None)
            self._wake_group = None
        with anyio.CancelScope(shield=True):  # also when the worker stops on a signal
            await self.engines.close()
        await super().teardown(*exc_info)

    async def _synced_pool(self) -> WorkPool:
        """The work pool, once the worker's first sync with the server has read it."""
        while True:
            try:
                return self.work_pool
            except RuntimeError:
                await anyio.sleep(0.2)

    async def _keep_engines_warm(self) -> None:
        """Every few seconds: learn the pool's flow modules from its deployments, then let
        the warm engine be replaced if need be. Before the first run, the engine is started as
        the pool's job template would start a run."""
        from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
        from prefect.workers.process import ProcessJobConfiguration

        while True:
            try:
                pool = await self._synced_pool()
                if self.engines.wanted is None:
                    config = await ProcessJobConfiguration.from_template_and_values(
                        pool.base_job_template, {}, client=self.client
                    )
                    command = engine_command(config.command) or (
                        f"{sys.executable} -m prefect.engine"
                    )
                    self.engines.wanted = EngineSpec.of(
                        command, run_environment(config.env or {}), config.working_dir,
                        config.stream_output,
                    )  # fmt: skip
                deployments = await self.client.read_deployments(
                    work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool.name]))
                )
                self.engines.flow_modules = tuple(
                    sorted({m for d in deployments if (m := entrypoint_module(d.entrypoint))})
                )
                await self.engines.maintain()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # the next pass tries again; runs start cold meanwhile
                LOGGER.warning("Keeping engines warm failed (%s: %s)", type(exc).__name__, exc)
            await anyio.sleep(MAINTAIN_ENGINES_S)

    async def _wake_on_scheduled_runs(self) -> None:
        """Poll for due runs whenever the server schedules one on this pool. A lost
        connection is retried by Prefect's subscriber; if it gives up, the worker says so,
        goes on polling at its normal interval, and subscribes again a little later."""
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

        pool = await self._synced_pool()
        event_filter = EventFilter(
            event=EventNameFilter(name=list(WAKE_EVENTS)),
            related=EventRelatedFilter(
                resources_in_roles=[(f"prefect.work-pool.{pool.id}", "work-pool")]
            ),
        )
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    LOGGER.info("Woken by %s events of work pool %r", WAKE_EVENTS, pool.name)
                    async for event in subscriber:
                        if is_pool_scheduled_event(event.event):
                            await self._poll_now()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                # Prefect's subscriber has already retried its connection; meanwhile the
                # regular poll keeps finding runs.
                LOGGER.warning(
                    "Event subscription ended (%s: %s); polling every %ss until it is back "
                    "(next try in %ss)",
                    type(exc).__name__, exc, PREFECT_WORKER_QUERY_SECONDS.value(),
                    RESUBSCRIBE_AFTER_S,
                )  # fmt: skip
            await anyio.sleep(RESUBSCRIBE_AFTER_S)

    async def _poll_now(self) -> None:
        for pause in WAKE_POLLS_S:
            await anyio.sleep(pause)
            submitted = await self.get_and_submit_flow_runs()
            if submitted:
                for flow_run in submitted:
                    LOGGER.info("Picked up flow run %s on its event", flow_run.id)
                return

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Start the run's engine in a process (and session) of its own and wait for it.

        The warm engine forks the run's process if it matches the run
        (`driftloop.app.warm_engines`); otherwise this is Prefect's `ProcessWorker.run` with
        a command, except that the engine gets its own session, so a run outlives its worker
        (see `driftloop.app._prefect_runner`). The command is the pool's, with `python` meaning
        this worker's interpreter.
        """
        from prefect.flows import load_flow_from_flow_run

        from driftloop.app._prefect_runner import EngineCommandStarter, FlowRunExecutorContext

        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED
        command = engine_command(configuration.command) or f"{sys.executable} -m prefect.engine"
        env = run_environment(configuration.env)
        engine, reason = self.engines.take(
            EngineSpec.of(command, env, configuration.working_dir, configuration.stream_output)
        )
        if engine is not None:
            # The starter makes the run's folder and logs the run's process once it is forked.
            working_dir: Any = contextlib.nullcontext(None)
        else:
            LOGGER.info("Flow run %s starts in a cold engine: %s", flow_run.id, reason)
            working_dir = (
                tempfile.TemporaryDirectory(suffix="prefect")
                if not configuration.working_dir
                else contextlib.nullcontext(configuration.working_dir)
            )
        execution = None
        with working_dir as folder:
            async with FlowRunExecutorContext() as context:
                starter: ProcessStarter
                if engine is not None:
                    starter = WarmEngineStarter(
                        engine, split_environment(env)[1], context.control_channel
                    )
                else:
                    starter = EngineCommandStarter(
                        command=command,
                        cwd=Path(folder).resolve(),
                        env=configuration.env,
                        stream_output=configuration.stream_output,
                        control_channel=context.control_channel,
                        isolate_process_group=True,
                    )
                executor = context.create_executor(
                    flow_run, starter, resolve_flow=load_flow_from_flow_run,
                    propose_submitting=False,
                )  # fmt: skip

                async def execute(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                    nonlocal execution
                    execution = await executor.submit(task_status=task_status)

                async with anyio.create_task_group() as group:
                    handle = await group.start(execute)
                    if handle.pid is None:
                        raise RuntimeError("Flow run process has no PID")
                    task_status.started(handle.pid)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )


def main(argv: list[str] | None = None) -> int:
    """`driftloop worker`: serve the work pool until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=names.WORK_POOL, help="work pool to serve")
    parser.add_argument("--name", default=None, help="worker name (default: generated)")
    settings = get_settings()
    parser.add_argument(
        "--warm-engines",
        type=int,
        choices=(0, 1),
        default=settings.warm_engines,
        help="1: fork each run from a warm engine; 0: start every run cold",
    )
    parser.add_argument(
        "--warm-idle-s",
        type=float,
        default=settings.warm_engine_idle_s,
        help="the warm engine is replaced after this many seconds without a run",
    )
    args = parser.parse_args(argv)
    worker = DriftloopWorker(
        work_pool_name=args.pool, name=args.name, warm_engines=args.warm_engines,
        warm_idle_s=args.warm_idle_s, warm_imports=settings.warm_import_modules,
    )  # fmt: skip
    anyio.run(serve_until_signalled, worker)
    return 0


async def serve_until_signalled(worker: DriftloopWorker) -> None:
    """Run the worker until SIGINT or SIGTERM, then let it shut down; a second signal kills
    it, as `prefect worker start` does.

    Prefect's own CLI turns the first signal into a KeyboardInterrupt, which can land between
    any two bytecodes: say, after a warm engine was started and before the pool recorded it,
    and that engine would outlive the worker. Here a signal only cancels the worker's scope,
    and cancellation lands at an `await`, where the pool's bookkeeping is whole.
    """
    import signal

    stopping = anyio.CancelScope()

    async def stop_on_signals(*, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if stopping.cancel_called:
                    print(f"Received {name} again. Killing the driftloop worker.", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                print(f"Received {name}. Stopping the driftloop worker...", flush=True)
                stopping.cancel()

    async with anyio.create_task_group() as group:
        await group.start(stop_on_signals)
        with stopping:
            await worker.start(with_healthcheck=False, printer=print)
        group.cancel_scope.cancel()


if __name__ == "__main__":
    raise SystemExit(main())
