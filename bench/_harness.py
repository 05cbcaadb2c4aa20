"""A throwaway embedded stack for benchmarks: temp state, a real Prefect server, the demo.

Import this module (and call `configure`) before anything imports Prefect: Prefect reads its
settings from the environment when it is first imported.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path

from driftloop.core.settings import PROJECT_ROOT, TELEMETRY_OFF


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        from driftloop.app.supervisor import Component, Supervisor

        port = int(os.environ["DRIFTLOOP_BENCH_PREFECT_PORT"])
        state = root / ".driftloop"
        self.supervisor = Supervisor(state / "run", service_id="bench", log=lambda _: None)
        self.service = Component(
            name="prefect-server",
            argv=[sys.executable, "-m", "prefect", "server", "start", "--host",
                  "127.0.0.1", "--port", str(port)],
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
