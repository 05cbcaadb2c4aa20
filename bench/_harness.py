"""Throwaway stacks for benchmarks, in temporary state folders with their own ports.

- `Stack`: the whole service, `driftloop up`, measured the way a user triggers work.
- `configure` + `PrefectServer`: a Prefect server alone, for in-process figures. Import this
  module (and call `configure`) before anything imports Prefect: Prefect reads its settings
  from the environment when it is first imported.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from driftloop.app.ports import free_port
from driftloop.core.settings import PROJECT_ROOT, TELEMETRY_OFF


def configure(prefix: str) -> Path:
    """Point every component at a fresh temporary state folder; return its checkout root."""
    root = Path(tempfile.mkdtemp(prefix=f"driftloop-{prefix}-"))
    shutil.copytree(PROJECT_ROOT / "feature_repo", root / "feature_repo")
    state = root / ".driftloop"
    port = free_port()
    os.environ.update(
        {
            **TELEMETRY_OFF,
            "DRIFTLOOP_HOME": str(state),
            "DRIFTLOOP_FEATURE_REPO": str(root / "feature_repo"),
            "PREFECT_HOME": str(state / "prefect"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(state / "results"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
            "DVC_SITE_CACHE_DIR": str(state / "cache" / "dvc"),
        }
    )
    (state / "prefect").mkdir(parents=True)
    os.environ["DRIFTLOOP_BENCH_PREFECT_PORT"] = str(port)
    return root


class PrefectServer:
    def __init__(self, root: Path):
        from driftloop.app._prefect_server import server_argv
        from driftloop.app.supervisor import Component, Supervisor

        port = int(os.environ["DRIFTLOOP_BENCH_PREFECT_PORT"])
        state = root / ".driftloop"
        self.supervisor = Supervisor(state / "run", service_id="bench", log=lambda _: None)
        self.service = Component(
            name="prefect-server",
            argv=server_argv("127.0.0.1", port),  # as `driftloop up` starts it
            env=dict(os.environ),
            log_file=state / "logs" / "prefect-server.log",
            health_url=f"http://127.0.0.1:{port}/api/health",
            port=port,
        )  # fmt: skip

    def __enter__(self) -> PrefectServer:
        self.supervisor.start(self.service)
        self.supervisor.wait_healthy(self.service, 120)
        return self

    def __exit__(self, *exc: object) -> None:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        self.supervisor.stop_all()


class Stack:
    """`driftloop up` in a temporary checkout-like folder, with ports of its own."""

    def __init__(self, worker: str = "driftloop", profile: str = "embedded") -> None:
        self.worker = worker
        self.profile = profile
        self.root = Path(tempfile.mkdtemp(prefix="driftloop-bench-stack-"))
        shutil.copytree(PROJECT_ROOT / "feature_repo", self.root / "feature_repo")
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRIFTLOOP_"))
        }
        self.env.pop("MLFLOW_BACKEND_STORE_URI", None)  # the local databases, not the caller's
        self.env.update(
            {
                **TELEMETRY_OFF,
                "DRIFTLOOP_HOME": str(self.root / ".driftloop"),
                "DRIFTLOOP_FEATURE_REPO": str(self.root / "feature_repo"),
                "DRIFTLOOP_PREFECT_PORT": str(self.prefect_port),
                "DRIFTLOOP_MLFLOW_PORT": str(self.mlflow_port),
                "DRIFTLOOP_NOTIFY_PORT": str(free_port()),
                "DRIFTLOOP_RAY_PORT": str(free_port()),
                "DRIFTLOOP_SERVING_PORT": str(free_port()),
                "DRIFTLOOP_WORKER": worker,
                "DRIFTLOOP_PROFILE": profile,
                "DRIFTLOOP_POSTGRES_PORT": str(free_port()),
                "DRIFTLOOP_REDIS_PORT": str(free_port()),
            }
        )
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        self.lines: list[str] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "driftloop.app.cli", "up"], env=self.env, cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"{text!r} not seen:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def api_client():
    """Prefect's own HTTP client: it retries a 503 from the busy SQLite server, as the UI's
    and the workers' calls do."""
    from prefect.client.base import PrefectHttpxSyncClient

    return PrefectHttpxSyncClient(timeout=120)


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[tuple[str, ...]], title: str) -> str:
    """A plain-text table: the first row is the header (e.g. measurement, value, target)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [title, line]
    for i, row in enumerate(rows):
        out.append(" | ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)))
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)
