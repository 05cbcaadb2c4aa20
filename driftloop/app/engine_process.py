"""A warm engine: a flow-run process started before its run, with its imports already done.

driftloop's worker keeps one or two of these ready (`driftloop.app.warm_engines`). Each is
started as `python -m driftloop.app.engine_process MODULE...`, in the working directory and
with the environment its run will have, except Prefect's per-run hand-off variables
(`PREFECT__*`: the flow-run id, the control channel's port and token, the deployment's
name...), which do not exist yet. It imports Prefect's flow engine and the named modules (the
work pool's flow modules), then waits for one line on stdin: a JSON object of those hand-off
variables. It then runs `prefect.engine` exactly as `python -m prefect.engine` would, and exits
with its exit code. End of input instead of a line means it is not needed: it exits 0. So a
warm engine never outlives its worker idle: the worker's end closes the pipe.

A run can be handed over before the pre-imports are done (the worker's replacement engine
starts a few seconds after a run takes the last one, and its imports take 8-15 s of CPU here).
The engine then stops pre-importing at once, after the module it is on: the run imports what it
needs itself, as a cold engine would, with a head start, instead of waiting for modules it
may not need (measured: a rerun handed to an engine 1.3 s into its imports went Running
13.8 s after it was created when it waited for all of them, 3.2-5.2 s with this; one handed
to a ready engine, 0.9-1.3 s).

Everything Prefect reads from its settings (the API URL, the logging and heartbeat settings)
is in the environment the process starts with, and equal to the run's (the worker checks that
before it hands a run over); the hand-off variables are read from `os.environ` when the engine
runs, which is why they can come later.

Example:
    >>> handoff_line({"PREFECT__FLOW_RUN_ID": "1b3c"})
    b'{"PREFECT__FLOW_RUN_ID": "1b3c"}\\n'
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import select
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence

# What `python -m prefect.engine` imports before it runs a flow: the bulk of its start time.
ENGINE_IMPORTS = ("prefect", "prefect.flow_engine", "prefect.flows", "prefect._internal.metrics")
HANDOFF_PREFIX = "PREFECT__"


def handoff_line(env: Mapping[str, str]) -> bytes:
    """The line the worker writes to a warm engine to give it its run."""
    return (json.dumps(dict(env)) + "\n").encode()


def preimport(modules: Sequence[str], handed_over: Callable[[], bool] = lambda: False) -> None:
    """Import Prefect's engine, then the flows' modules until `handed_over()` says a run is
    waiting. A module that fails to import is left out: the engine imports it again when its
    run needs it, and reports the error on the run, as a cold engine would.

    Example:
        >>> preimport(["json", "no_such_module_here"], handed_over=lambda: True)
        >>> "no_such_module_here" in sys.modules
        False
    """
    for index, module in enumerate((*ENGINE_IMPORTS, *modules)):
        if index >= len(ENGINE_IMPORTS) and handed_over():
            return  # the run's own imports take it from here
        try:
            importlib.import_module(module)
        except Exception as exc:  # reported on the run that needs it, not here
            print(f"warm engine: {module} not pre-imported ({type(exc).__name__}: {exc})",
                  file=sys.stderr)  # fmt: skip


def run_engine(handoff: Mapping[str, str]) -> None:
    """Run `prefect.engine` as its `__main__`, with the run's hand-off environment."""
    unknown = [key for key in handoff if not key.startswith(HANDOFF_PREFIX)]
    if unknown:  # the worker sends nothing else; anything else would bypass its env check
        raise SystemExit(f"warm engine: not hand-off variables: {sorted(unknown)}")
    os.environ.update(handoff)
    sys.argv = [sys.argv[0]]  # the engine takes its run id from argv[1] if there is one
    with warnings.catch_warnings():
        # runpy warns when the module was imported already; it runs as __main__ all the same.
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


def stdin_ready() -> bool:
    """Whether the worker has written to this engine (a hand-off, or end of input)."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def main(argv: Sequence[str]) -> int:
    """Pre-import (until a run arrives), wait for the run, run it."""
    preimport(argv, handed_over=stdin_ready)
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0  # recycled, or the worker ended
    run_engine(json.loads(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
