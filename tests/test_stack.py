"""`driftloop up` as a user runs it: real servers, a real worker, the demo, clean shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from driftloop.settings import PROJECT_ROOT, TELEMETRY_OFF
from driftloop.supervisor import group_members
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def processes_of(home: Path) -> list[str]:
    """Command lines of live processes started for this state folder."""
    marker = f"DRIFTLOOP_HOME={home}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


STARTED: list[Up] = []


class Up:
    """A `driftloop up` process whose output is collected line by line."""

    def __init__(self, env: dict[str, str]):
        STARTED.append(self)
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "driftloop.cli", "up"],
            env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{text!r} not seen; output:\n" + "\n".join(self.lines))

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=90)
        self.reader.join(timeout=5)
        return code


@pytest.fixture
def stack_env(tmp_path):
    root = tmp_path / "checkout"
    shutil.copytree(PROJECT_ROOT / "feature_repo", root / "feature_repo")
    (root / "home").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRIFTLOOP_"))}
    env.update(
        {
            **TELEMETRY_OFF,
            "HOME": str(root / "home"),
            "DRIFTLOOP_HOME": str(root / ".driftloop"),
            "DRIFTLOOP_FEATURE_REPO": str(root / "feature_repo"),
            "DRIFTLOOP_PREFECT_PORT": str(free_port()),
            "DRIFTLOOP_MLFLOW_PORT": str(free_port()),
        }
    )
    yield env
    while STARTED:  # a test that failed half-way leaves its `up` running
        up = STARTED.pop()
        if up.process.poll() is None:
            up.stop(signal.SIGTERM)
    leftovers = processes_of(root / ".driftloop")
    for pid_file in (root / ".driftloop" / "run").glob("*.pid"):
        for pid in group_members(int(pid_file.read_text().split()[0])):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, leftovers


def test_up_trains_the_demo_and_stops_cleanly(stack_env):
    home = Path(stack_env["DRIFTLOOP_HOME"])
    prefect_url = f"http://127.0.0.1:{stack_env['DRIFTLOOP_PREFECT_PORT']}"
    mlflow_url = f"http://127.0.0.1:{stack_env['DRIFTLOOP_MLFLOW_PORT']}"

    up = Up(stack_env)
    up.wait_for("driftloop is up", timeout=240)
    assert any(prefect_url in line for line in up.lines)
    assert any(mlflow_url in line for line in up.lines)
    up.wait_for("completed", timeout=300)

    # The run is visible in the Prefect API, created from the deployment by the worker.
    import httpx

    runs = httpx.post(f"{prefect_url}/api/flow_runs/filter", json={}).json()
    (run,) = runs
    assert run["state_type"] == "COMPLETED" and run["deployment_id"]
    deployment = httpx.get(f"{prefect_url}/api/deployments/{run['deployment_id']}").json()
    assert deployment["name"] == "train-churn-model"
    blocks = httpx.post(f"{prefect_url}/api/block_documents/filter", json={}).json()
    assert {b["block_type"]["slug"] for b in blocks} >= {
        "driftloop-mlflow", "driftloop-feast", "driftloop-dvc-dataset"
    }  # fmt: skip

    # MLflow shows the champion with its lineage.
    from mlflow import MlflowClient

    # Explicit registry URI: other tests in this process set MLflow's global one.
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    champion = client.get_model_version_by_alias("churn-model", "champion")
    assert champion.tags["driftloop.dvc.md5"]
    assert champion.tags["driftloop.prefect.flow_run_id"] == run["id"]
    assert champion.tags["driftloop.feast.feature_service"] == "churn_model_v1"

    assert up.stop(signal.SIGINT) == 0
    assert "Stopped." in up.lines[-1]
    assert processes_of(home) == []
    # Everything went to the state folder; nothing to the user's home.
    assert list(Path(stack_env["HOME"]).iterdir()) == []
    for part in (
        "prefect/prefect.db",
        "mlflow/mlflow.db",
        "feast/registry.db",
        "data/registry/.dvc",
        "data/dvc-remote",
        "results",
        "logs/prefect-worker.log",
    ):
        assert (home / part).exists(), part  # fmt: skip

    # A second start reuses the state: no new demo data, no retraining; SIGTERM stops it.
    again = Up(stack_env)
    again.wait_for("driftloop is up", timeout=240)
    assert not any("prepared demo" in line for line in again.lines)
    assert not any("Training " in line for line in again.lines)
    assert again.stop(signal.SIGTERM) == 0
    assert processes_of(home) == []


def test_down_cleans_up_after_a_killed_supervisor(stack_env):
    home = Path(stack_env["DRIFTLOOP_HOME"])
    env = {**stack_env}
    up = Up(env)
    up.wait_for("driftloop is up", timeout=240)
    up.process.kill()  # SIGKILL: no chance to stop its children
    up.process.wait()
    code = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "down"], env=env, cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert code.returncode == 0, code.stdout + code.stderr
    deadline = time.monotonic() + 30
    while processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(home) == []
