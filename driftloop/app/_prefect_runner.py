"""The one module that imports Prefect's (private) flow-run execution internals.

driftloop's worker starts each flow run's engine the way Prefect's `ProcessWorker.run` does
with an explicit command (`EngineCommandStarter` inside a `FlowRunExecutorContext`), with two
differences:

- The engine gets a session of its own (`isolate_process_group=True`, which Prefect's
  workspace starter uses and its command path does not). In the worker's session a run would
  die with the worker: a Ctrl-C in the worker's terminal, or the service stopping what is left
  of a dead worker, would take every run in flight with it.
- A run can be handed to a warm engine (`driftloop.app.warm_engines.WarmEngineStarter`), which
  implements the executor's `ProcessStarter` protocol and wraps its process in Prefect's
  `ProcessHandle` with the same isolated termination scope, so cancellation and crash
  reporting work on it as on Prefect's own starters.

These modules are private (leading underscore) and may change in any Prefect release, so they
are imported here and nowhere else, Prefect is pinned exactly in pyproject.toml, and
tests/test_worker.py fails loudly, naming this module, if the names or the parameters used
below disappear.
"""

from __future__ import annotations

try:
    from prefect.runner._flow_run_executor import FlowRunExecutorContext, ProcessStarter
    from prefect.runner._process_manager import ProcessHandle
    from prefect.runner._process_manager import (
        create_isolated_termination_scope as isolated_termination_scope,
    )
    from prefect.runner._starter_engine import EngineCommandStarter
except ImportError as exc:  # pragma: no cover - only after a Prefect upgrade
    import prefect

    raise ImportError(
        f"Prefect {prefect.__version__} no longer has the flow-run execution internals "
        "driftloop's worker uses (prefect.runner._flow_run_executor / _process_manager / "
        f"_starter_engine): update driftloop/app/_prefect_runner.py ({exc})"
    ) from exc

# The keyword arguments driftloop passes to EngineCommandStarter (checked by the tests).
STARTER_PARAMETERS = ("command", "cwd", "env", "stream_output", "control_channel",
                      "isolate_process_group")  # fmt: skip
# What a ProcessStarter's start() receives, and what a ProcessHandle is built from.
PROCESS_STARTER_PARAMETERS = ("flow_run", "task_status")
PROCESS_HANDLE_FIELDS = ("_process", "termination_scope")

__all__ = [
    "PROCESS_HANDLE_FIELDS",
    "PROCESS_STARTER_PARAMETERS",
    "STARTER_PARAMETERS",
    "EngineCommandStarter",
    "FlowRunExecutorContext",
    "ProcessHandle",
    "ProcessStarter",
    "isolated_termination_scope",
]
