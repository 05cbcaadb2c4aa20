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
from driftloop.supervisor import session_members
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

# The embedded server is Prefect on SQLite. Under the event storm it has been seen holding its
# write lock for ~60 s ("database is locked" in its log), so a read may wait that long.
API_TIMEOUT_S = 120


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


def _make_env(root: Path) -> dict[str, str]:
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
    return env


def _stop_leftovers(root: Path) -> list[str]:
    while STARTED:  # a test that failed half-way leaves its `up` running
        up = STARTED.pop()
        if up.process.poll() is None:
            up.stop(signal.SIGTERM)
    leftovers = processes_of(root / ".driftloop")
    for pid_file in (root / ".driftloop" / "run").glob("*.pid"):
        for pid in session_members(int(pid_file.read_text().split()[0])):
            os.kill(pid, signal.SIGKILL)
    return leftovers


@pytest.fixture
def stack_env(tmp_path):
    env = _make_env(tmp_path / "checkout")
    yield env
    leftovers = _stop_leftovers(tmp_path / "checkout")
    assert not leftovers, leftovers


class Running:
    """The `driftloop up` this module's tests share, after its first training."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.home = Path(env["DRIFTLOOP_HOME"])
        self.prefect_url = f"http://127.0.0.1:{env['DRIFTLOOP_PREFECT_PORT']}"
        self.mlflow_url = f"http://127.0.0.1:{env['DRIFTLOOP_MLFLOW_PORT']}"
        self.up = Up(env)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """`make up` as a user runs it, once for the tests that need a live service."""
    root = tmp_path_factory.mktemp("stack") / "checkout"
    stack = Running(_make_env(root))
    stack.up.wait_for("driftloop is up", timeout=240)
    stack.up.wait_for("completed", timeout=300)
    yield stack
    leftovers = _stop_leftovers(root)
    assert not leftovers, leftovers


def flow_runs(prefect_url: str, deployment: str) -> list[dict]:
    """Flow runs of a deployment, oldest first, as the Prefect API returns them."""
    from datetime import UTC, datetime

    import httpx

    body = {"deployments": {"name": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
    runs = httpx.post(
        f"{prefect_url}/api/flow_runs/filter", json=body, timeout=API_TIMEOUT_S
    ).json()
    # Leave out the runs the schedules created ahead of time (e.g. tonight's retraining).
    now = datetime.now(UTC)
    return [
        r for r in runs
        if not (r["state_type"] == "SCHEDULED"
                and datetime.fromisoformat(r["expected_start_time"]) > now)
    ]  # fmt: skip


def wait_for_run(prefect_url: str, deployment: str, match, timeout: float) -> dict:
    """The first run of the deployment for which match(run) holds, once it is final."""
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while time.monotonic() < deadline:
        seen = flow_runs(prefect_url, deployment)
        for run in seen:
            if match(run) and run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
        time.sleep(1)
    summary = [(r["name"], r["state_name"], r["parameters"]) for r in seen]
    raise AssertionError(f"no matching {deployment} run in {timeout}s; runs: {summary}")


def by_automation(run: dict) -> bool:
    return (run.get("created_by") or {}).get("type") == "AUTOMATION"


def test_up_trains_the_demo_and_closes_the_loop_on_new_data(running):
    """The issue's end-to-end path, with no manual flow call after the first training:
    a drifted batch is pushed; automations train and promote a new champion, and the
    promotion starts batch scoring, which writes predictions."""
    up, home, stack_env = running.up, running.home, running.env
    prefect_url, mlflow_url = running.prefect_url, running.mlflow_url
    assert any(prefect_url in line for line in up.lines)
    assert any(mlflow_url in line for line in up.lines)

    # 1. The first training: run from the deployment by the worker.
    import httpx

    trainings = flow_runs(prefect_url, "train-churn-model")
    assert len(trainings) == 1, [(r["name"], r["state_name"], r["parameters"]) for r in trainings]
    (run,) = trainings
    assert run["state_type"] == "COMPLETED" and run["deployment_id"]
    blocks = httpx.post(f"{prefect_url}/api/block_documents/filter", json={}).json()
    assert {b["block_type"]["slug"] for b in blocks} >= {
        "driftloop-mlflow", "driftloop-feast", "driftloop-dvc-dataset", "driftloop-ray",
        "driftloop-drift-policy",
    }  # fmt: skip
    automations = httpx.post(f"{prefect_url}/api/automations/filter", json={}).json()
    assert {a["name"] for a in automations} >= {
        "train-on-new-data", "retrain-on-drift", "score-on-promotion"
    }  # fmt: skip

    # MLflow shows the champion with its lineage.
    from mlflow import MlflowClient

    # Explicit registry URI: other tests in this process set MLflow's global one.
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    champion = client.get_model_version_by_alias("churn-model", "champion")
    assert champion.version == "1"
    assert champion.tags["driftloop.dvc.md5"]
    assert champion.tags["driftloop.prefect.flow_run_id"] == run["id"]
    assert champion.tags["driftloop.feast.feature_service"] == "churn_model_v1"

    # The promotion event started batch scoring through its automation.
    scoring = wait_for_run(prefect_url, "score-churn-batch", by_automation, timeout=240)
    assert scoring["state_type"] == "COMPLETED", scoring["state"]
    assert list((home / "predictions" / "churn-model" / "v1").glob("*.parquet"))

    # 2. A drifted batch is pushed, as `make drift` does; its post-push hook emits the event.
    pushed = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "add-batch", "--drift"], env=stack_env,
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "Emitted driftloop.dataset.updated" in pushed.stdout, pushed.stdout
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=home / "data" / "registry", capture_output=True,
        text=True, check=True,
    ).stdout.strip()  # fmt: skip

    # 3. The automation trains on exactly that revision; the new model becomes champion.
    retrain = wait_for_run(
        prefect_url, "train-churn-model",
        lambda r: by_automation(r) and r["parameters"].get("rev") == commit, timeout=600,
    )  # fmt: skip
    assert retrain["state_type"] == "COMPLETED", retrain["state"]
    assert retrain["parameters"]["trigger"]["reason"] == "driftloop.dataset.updated"
    champion = client.get_model_version_by_alias("churn-model", "champion")
    assert champion.version == "2", champion.tags
    assert champion.tags["driftloop.prefect.flow_run_id"] == retrain["id"]
    assert champion.tags["driftloop.trigger.reason"] == "driftloop.dataset.updated"
    assert champion.tags["driftloop.dvc.commit"] == commit

    # ... and its promotion starts scoring with version 2.
    wait_for_run(
        prefect_url, "score-churn-batch",
        lambda r: by_automation(r) and r["id"] != scoring["id"], timeout=240,
    )  # fmt: skip
    assert list((home / "predictions" / "churn-model" / "v2").glob("*.parquet"))

    # 4. An event storm: 20 drift alerts within a minute start at most 2 trainings; the
    # others are cancelled by the deployment's concurrency limit, visibly.
    from prefect.events import Event

    events = [
        Event(
            event="driftloop.drift.detected",
            resource={"prefect.resource.id": "driftloop.model.churn-model"},
            payload={"drift_share": 0.5, "drifted_columns": ["plan", f"storm-{i}"],
                     "champion_version": "2", "window_start": "", "window_end": ""},
        ).model_dump(mode="json")
        for i in range(20)
    ]  # fmt: skip
    # 20 separate events (each its own id), delivered together as a busy event bus would.
    httpx.post(f"{prefect_url}/api/events", json=events, timeout=120).raise_for_status()

    def storm_runs() -> list[dict]:
        return [
            r for r in flow_runs(prefect_url, "train-churn-model")
            if r["parameters"].get("trigger", {}).get("reason") == "driftloop.drift.detected"
        ]  # fmt: skip

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = storm_runs()
        final = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CANCELLED")]
        if len(runs) == 20 and len(final) == 20:
            break
        time.sleep(2)
    runs = storm_runs()
    states = sorted(r["state_type"] for r in runs)
    assert len(runs) == 20, states
    ran = [r for r in runs if r["state_type"] != "CANCELLED"]
    assert 1 <= len(ran) <= 2, states
    assert all(r["state_type"] == "COMPLETED" for r in ran), states
    # The drifted columns of the event reached the run's parameters.
    assert all(r["parameters"]["trigger"]["drifted_columns"][0] == "plan" for r in runs)
    skipped = next(r for r in runs if r["state_type"] == "CANCELLED")
    assert "concurrency" in (skipped["state"]["message"] or "").lower(), skipped["state"]


def test_a_custom_run_started_from_the_ui_form_completes(running):
    """A real browser (Debian's chromium via Playwright): the deployment page, the custom run
    form with a non-default parameter, the run followed to Completed, its artifacts."""
    from tests.browser import custom_run_from_the_ui, ensure_chromium

    missing = ensure_chromium()
    if missing:
        pytest.skip(f"NO BROWSER TEST: chromium cannot be installed here: {missing}")
    shots = Path(os.environ.get("DRIFTLOOP_SCREENSHOTS", running.home / "screenshots"))
    run_id = custom_run_from_the_ui(running.prefect_url, "train-churn-model", 3, shots)

    import httpx

    run = httpx.get(f"{running.prefect_url}/api/flow_runs/{run_id}", timeout=API_TIMEOUT_S)
    run = run.json()
    assert run["state_type"] == "COMPLETED"
    assert run["parameters"]["search"]["n_trials"] == 3  # the value typed into the form
    assert {p.name for p in shots.glob("*.png")} >= {
        "deployment.png", "custom-run-form.png", "flow-run.png", "artifacts.png"
    }  # fmt: skip


def test_up_stops_cleanly_and_a_second_start_reuses_the_state(running):
    up, home, stack_env = running.up, running.home, running.env
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
