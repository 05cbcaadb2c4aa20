"""The one module that imports Prefect's (private) flow-run execution internals.

driftloop's worker starts each flow run's engine the way Prefect's `ProcessWorker.run` does
with an explicit command (`EngineCommandStarter` inside a `FlowRunExecutorContext`), with one
difference: the engine gets a session of its own (`isolate_process_group=True`, which
Prefect's workspace starter uses and its command path does not). In the worker's session a run
would die with the worker: a Ctrl-C in the worker's terminal, or the service stopping what is
left of a dead worker, would take every run in flight with it.

These modules are private (leading underscore) and may change in any Prefect release, so they
are imported here and nowhere else, Prefect is pinned exactly in pyproject.toml, and
tests/test_worker.py fails loudly, naming this module, if the names or the parameters used
below disappear.
"""

from __future__ import annotations

try:
    from prefect.runner._flow_run_executor import FlowRunExecutorContext
    from prefect.runner._starter_engine import EngineCommandStarter
except ImportError as exc:  # pragma: no cover - only after a Prefect upgrade
    import prefect

    raise ImportError(
        f"Prefect {prefect.__version__} no longer has the flow-run execution internals "
        "driftloop's worker uses (prefect.runner._flow_run_executor / _starter_engine): update "
        f"driftloop/app/_prefect_runner.py ({exc})"
    ) from exc

# The keyword arguments driftloop passes to EngineCommandStarter (checked by the tests).
STARTER_PARAMETERS = ("command", "cwd", "env", "stream_output", "control_channel",
                      "isolate_process_group")  # fmt: skip

__all__ = ["STARTER_PARAMETERS", "EngineCommandStarter", "FlowRunExecutorContext"]
