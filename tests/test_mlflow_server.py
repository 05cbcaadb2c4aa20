"""MLflow's server as one process (driftloop.app._mlflow_server): the private name it patches
still exists and is how `mlflow server` starts its server, and the server it becomes answers,
is the only process, and stops on SIGTERM."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from driftloop.core.settings import TELEMETRY_OFF
from tests.conftest import free_port


def test_mlflow_server_still_starts_its_server_through_exec_cmd():
    # If this fails, update driftloop/app/_mlflow_server.py for this MLflow.
    import mlflow.server

    assert callable(mlflow.server._exec_cmd)
    assert "_exec_cmd(" in inspect.getsource(mlflow.server._run_server)


@pytest.mark.integration  # a real MLflow server, ~20 s: not the unit tier
def test_the_server_is_the_process_started(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "driftloop.app._mlflow_server",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, **TELEMETRY_OFF}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "MLflow did not answer within 120 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        # The process that answers is the one started: no waiting parent, no child.
        server = psutil.Process(process.pid)
        assert "uvicorn" in server.cmdline()
        assert server.children() == []
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it caught.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
