"""Flows the worker test deploys (imported by module path, as driftloop's deployments are)."""

from __future__ import annotations

import os
import time

import psutil
from prefect import flow


@flow(name="worker-parent-check", persist_result=True)
def parent_of_engine() -> str:
    """The command line of the process that started this flow run's engine."""
    return " ".join(psutil.Process(os.getppid()).cmdline())


@flow(name="worker-sleeper")
def sleeper(pid_file: str, seconds: float = 120.0) -> None:
    """Write this run's PID, then sleep (long enough to be killed)."""
    with open(pid_file, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(seconds)


@flow(name="worker-engine-facts", persist_result=True)
def engine_facts(variable: str = "") -> dict:
    """This run's engine: its PID, its parent's, and the value of an environment variable."""
    return {"pid": os.getpid(), "ppid": os.getppid(),
            "value": os.environ.get(variable) if variable else None}  # fmt: skip
