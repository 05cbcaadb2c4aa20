"""`driftloop up` as a user runs it, for the stack tests: a subprocess with its own ports and
state folder, its output collected line by line, and the Prefect and MLflow APIs beside it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from driftloop.core.settings import PROJECT_ROOT, TELEMETRY_OFF
from tests.conftest import free_port

# The embedded server is Prefect on SQLite. Under an event storm it has been seen holding its
# write lock for ~60 s ("database is locked" in its log), so a read may wait that long.
API_TIMEOUT_S = 120
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
TRAINING = "train-churn-model"
SCORING = "score-churn-batch"
SWAP = "swap-churn-serving"


def processes_of(home: Path) -> list[str]:
    """Command lines of live processes started for this state folder: their environment
    names it, or (Ray's processes rewrite their environment) they hold files of its Ray."""
    from driftloop.app.supervisor import processes_using
    from flows.task_runners import ray_temp_path

    marker = str(home)
    holding_ray_files = set(processes_using((str(home / "ray"), str(ray_temp_path(home / "ray")))))
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            ours = (
                process.environ().get("DRIFTLOOP_HOME") == marker
                or process.pid in holding_ray_files
            )
            if ours:
                found.append(" ".join(process.cmdline()))
        except psutil.Error:
            continue
    return found


STARTED: list[Up] = []


class Up:
    """A `driftloop up` process whose output is collected line by line."""

    def __init__(self, env: dict[str, str]):
        STARTED.append(self)
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "driftloop.app.cli", "up"],
            env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float, after: int = 0) -> str:
        """The first output line (from line `after` on) that contains `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{text!r} not seen; output:\n" + "\n".join(self.lines))

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=120)
        self.reader.join(timeout=5)
        return code


def make_env(root: Path, profile: str = "embedded") -> dict[str, str]:
    """A checkout-like folder (its own feature repo copy, home and state), ports, and the
    profile (`server`: PostgreSQL and Redis, started by `up` on ports of their own)."""
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
            "DRIFTLOOP_NOTIFY_PORT": str(free_port()),
            "DRIFTLOOP_RAY_PORT": str(free_port()),
            "DRIFTLOOP_SERVING_PORT": str(free_port()),
            "DRIFTLOOP_PROFILE": profile,
            "DRIFTLOOP_POSTGRES_PORT": str(free_port()),
            "DRIFTLOOP_REDIS_PORT": str(free_port()),
        }
    )
    return env


def stop_leftovers(root: Path) -> list[str]:
    """Stop what a test that failed half-way left running; return what was still alive."""
    while STARTED:
        up = STARTED.pop()
        if up.process.poll() is None:
            up.stop(signal.SIGTERM)
    leftovers = processes_of(root / ".driftloop")
    subprocess.run(
        [sys.executable, "-m", "driftloop.app.cli", "down"], env={
            **os.environ, "DRIFTLOOP_HOME": str(root / ".driftloop")
        }, cwd=PROJECT_ROOT, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return leftovers


class Stack:
    """The `driftloop up` the stack tests share, and what they need to talk to it."""

    def __init__(self, root: Path, profile: str = "embedded"):
        self.root = root
        self.profile = profile
        self.env = make_env(root, profile)
        self.home = Path(self.env["DRIFTLOOP_HOME"])
        self.prefect_url = f"http://127.0.0.1:{self.env['DRIFTLOOP_PREFECT_PORT']}"
        self.mlflow_url = f"http://127.0.0.1:{self.env['DRIFTLOOP_MLFLOW_PORT']}"
        self.serving_url = f"http://127.0.0.1:{self.env['DRIFTLOOP_SERVING_PORT']}"
        self.up = Up(self.env)

    def restart(self) -> Up:
        self.up = Up(self.env)
        self.up.wait_for("driftloop is up", timeout=240)
        return self.up

    # --- the APIs ---------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        # Prefect's own HTTP client, as the UI's and the workers' calls go: it retries 503
        # ("database is locked" on the SQLite server), 502 and 429 with backoff and raises on
        # any other error. A fresh one per call, so a stopped server fails fast.
        from prefect.client.base import PrefectHttpxSyncClient

        with PrefectHttpxSyncClient(base_url=f"{self.prefect_url}/api", timeout=API_TIMEOUT_S) as c:
            response = c.request(method, path, **kwargs)
            return response.json() if response.content else None

    def mlflow(self):
        from mlflow import MlflowClient

        # Explicit registry URI: other tests in this process set MLflow's global one.
        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)

    def prediction_log(self):
        """The serving application's prediction log as `up` configured it: the local
        PostgreSQL's `served` database on the server profile, parquet files otherwise."""
        from blocks.prediction_log import ParquetPredictionLog, SqlPredictionLog

        if self.profile == "server":
            port = self.env["DRIFTLOOP_POSTGRES_PORT"]
            return SqlPredictionLog(f"postgresql://driftloop@127.0.0.1:{port}/served")
        return ParquetPredictionLog(self.home / "served")

    def champion(self) -> str:
        from driftloop.core import names
        from tasks.registry import alias_version

        version = alias_version(self.mlflow(), "churn-model", names.ALIAS_CHAMPION)
        assert version is not None, "the stack has no champion"
        return version

    def flow_runs(self, deployment: str) -> list[dict]:
        """Flow runs of a deployment, oldest first, leaving out those the schedules created
        ahead of time (e.g. tonight's retraining)."""
        body = {"deployments": {"name": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
        runs = self.api("POST", "/flow_runs/filter", json=body)
        now = datetime.now(UTC)
        return [
            r for r in runs
            if not (r["state_type"] == "SCHEDULED" and r["state_name"] == "Scheduled"
                    and datetime.fromisoformat(r["expected_start_time"]) > now)
        ]  # fmt: skip

    def wait_for_run(self, deployment: str, match, timeout: float) -> dict:
        """The first run of the deployment for which match(run) holds, once it is final."""
        deadline = time.monotonic() + timeout
        seen: list[dict] = []
        while time.monotonic() < deadline:
            seen = self.flow_runs(deployment)
            for run in seen:
                if match(run) and run["state_type"] in FINAL:
                    return run
            time.sleep(1)
        summary = [(r["name"], r["state_name"], r["parameters"]) for r in seen]
        raise AssertionError(f"no matching {deployment} run in {timeout}s; runs: {summary}")

    def read_run(self, run_id: str) -> dict:
        return self.api("GET", f"/flow_runs/{run_id}")

    def wait_until_state(self, run_id: str, states: tuple[str, ...], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        run = self.read_run(run_id)
        while run["state_type"] not in states:
            assert time.monotonic() < deadline, (run["name"], run["state_name"], run["state"])
            time.sleep(1)
            run = self.read_run(run_id)
        return run

    def task_states(self, run_id: str) -> dict[str, list[str]]:
        """Task name -> state names of that task's runs in a flow run."""
        body = {"flow_runs": {"id": {"any_": [run_id]}}}
        states: dict[str, list[str]] = {}
        for task_run in self.api("POST", "/task_runs/filter", json=body):
            # Task run names are "<task name>-<3 hex>"; a trial's is its own ("trial-03 ...").
            name = task_run["name"]
            name = "evaluate-trial" if name.startswith("trial-") else name.rsplit("-", 1)[0]
            states.setdefault(name, []).append(task_run["state_name"])
        return states

    def start_training(self, **parameters: Any) -> dict:
        """What "Run > Custom run" in the UI does: a run of the training deployment."""
        (deployment,) = self.api(
            "POST", "/deployments/filter", json={"deployments": {"name": {"any_": [TRAINING]}}}
        )
        return self.api(
            "POST", f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": parameters},
        )  # fmt: skip

    def add_batch(self, *args: str) -> str:
        """`make batch` / `make drift`: push a batch (or `--count N`); return the newest
        registry commit."""
        pushed = subprocess.run(
            [sys.executable, "-m", "driftloop.app.cli", "add-batch", *args], env=self.env,
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        if "--no-labels" not in args:
            # Announced by add-batch; or, if the new-data check's schedule found the pushed
            # revision first, by that check; or a training already under way took it as the
            # newest revision (latest wins). add-batch then says so and does not announce it
            # a second time.
            assert (
                "Emitted driftloop.dataset.updated" in pushed.stdout
                or "was announced already (by detect-new-data)" in pushed.stdout
                or "is covered already: flow run" in pushed.stdout
            ), pushed.stdout
        return self.commits(1)[0]

    def run_deployment(self, deployment: str, timeout: float = 300, **parameters: Any) -> dict:
        """A run of the deployment, as its schedule or "Run" in the UI starts it, followed
        to its final state."""
        (found,) = self.api(
            "POST", "/deployments/filter", json={"deployments": {"name": {"any_": [deployment]}}}
        )
        run = self.api(
            "POST", f"/deployments/{found['id']}/create_flow_run", json={"parameters": parameters}
        )
        return self.wait_until_state(run["id"], FINAL, timeout=timeout)

    def events(self, name: str, since: str) -> list[dict]:
        """Events of this name that occurred since `since` (ISO), oldest first, every page of
        them, as the JSON the API serves (the tests index it as dicts)."""
        from prefect.client.orchestration import SyncPrefectClient
        from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

        from tests.helpers import read_all_events

        event_filter = EventFilter(
            event=EventNameFilter(name=[name]),
            occurred=EventOccurredFilter(since=datetime.fromisoformat(since)),
        )
        # This stack's server, not the tests' session server that get_client() would find;
        # a fresh client per call and the same patience as `api`.
        with SyncPrefectClient(
            f"{self.prefect_url}/api", httpx_settings={"timeout": API_TIMEOUT_S}
        ) as client:
            found = read_all_events(client, event_filter)
        return [e.model_dump(mode="json") for e in sorted(found, key=lambda e: e.occurred)]

    def commits(self, count: int) -> list[str]:
        """The newest `count` commits of the data registry, oldest first."""
        out = subprocess.run(
            ["git", "rev-list", f"-{count}", "HEAD"], cwd=self.home / "data" / "registry",
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return list(reversed(out.split()))

    def notifications(self) -> list[dict]:
        """What the local receiver got (what a person would have been told), oldest first."""
        import json

        file = self.home / "logs" / "notifications.jsonl"
        if not file.exists():
            return []
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]

    def component_pid(self, name: str) -> int:
        return int((self.home / "run" / f"{name}.pid").read_text().split()[0])


def by_automation(run: dict) -> bool:
    return (run.get("created_by") or {}).get("type") == "AUTOMATION"


def reason_of(run: dict) -> str | None:
    return (run["parameters"].get("trigger") or {}).get("reason")


class ServingProbe:
    """Requests to the serving application from a thread, one every `every_s` (the stack
    tests pace them like a user's traffic, so the trainings keep their CPU; 0 sends them back
    to back); every answer is kept: status, version, or the exception."""

    def __init__(self, url: str, body: str, every_s: float = 0.2):
        self.url = url
        self.body = body
        self.every_s = every_s
        self.answers: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as http:
            while not self._stop.wait(self.every_s):
                try:
                    response = http.post(f"{self.url}/predict", content=self.body)
                    self.answers.append((response.status_code, response.json().get("version")))
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> ServingProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_for_version(self, version: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers or self.answers[-1][1] != version:
            assert time.monotonic() < deadline, (self.answers[-5:], self.errors[-5:])
            time.sleep(0.5)

    def failed(self) -> list[object]:
        return [a for a in self.answers if a[0] != 200] + list(self.errors)
