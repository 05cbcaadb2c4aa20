"""Process-level settings: where state lives, which ports the embedded stack uses.

Everything a component needs to *find* the embedded stack comes from here (environment
variables prefixed ``DRIFTLOOP_``). Everything a flow needs to *use* a component comes from
Prefect blocks (see ``blocks/``), so that switching to remote components is a block edit.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Every process driftloop starts runs with these: each tool's own telemetry switch (README,
# "Telemetry"). With them no component opens a connection outside loopback. MLflow accepts
# only the literal "true".
TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
    "EVIDENTLY_DISABLE_TELEMETRY": "1",
    "ITERATIVE_DO_NOT_TRACK": "1",
    # ONNX Runtime (serving's compiled scoring) uploads telemetry on Linux since 1.29 and
    # writes a device id under ~/.cache unless this is set before it initializes.
    "ORT_DISABLE_TELEMETRY": "1",
}


# The ports Ray's workers listen on (`ray start`'s --min-worker-port/--max-worker-port
# defaults); the head refuses to start with its GCS port among them.
RAY_WORKER_PORTS = (10002, 19999)


class DriftloopSettings(BaseSettings):
    """Settings of the embedded stack, read from ``DRIFTLOOP_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", extra="ignore")

    home: Path = Field(
        default=PROJECT_ROOT / ".driftloop",
        description="The one folder that holds all state of the embedded stack.",
    )
    host: str = Field(default="127.0.0.1", description="Interface the embedded servers bind.")
    prefect_port: int = Field(default=4200, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    feature_repo: Path = Field(
        default=PROJECT_ROOT / "feature_repo",
        description="The demo's Feast feature repo (its yaml keeps state in ../.driftloop).",
    )
    startup_timeout_s: float = Field(
        default=90.0, gt=0, description="How long a component may take to become healthy."
    )
    notify_port: int = Field(
        default=4280, ge=1, le=65535, description="Port of the local notification receiver."
    )
    worker: Literal["driftloop", "stock"] = Field(
        default="driftloop",
        description=(
            "Which worker `driftloop up` runs on the work pool: driftloop's (woken by events) or "
            "Prefect's stock process worker (polls every second; for comparison, bench-events)."
        ),
    )
    warm_engines: int = Field(
        default=1,
        ge=0,
        le=1,
        description=(
            "1: driftloop's worker keeps a warm engine, a process with Prefect and the flows "
            "imported that forks a child for each run; 0: every run starts a cold interpreter."
        ),
    )
    warm_engine_idle_s: float = Field(
        default=900.0,
        gt=0,
        description="The warm engine is replaced by a fresh one after this many seconds "
        "without a run.",
    )
    warm_imports: str = Field(
        default="mlflow,feast,dvc.api",
        pattern=r"^[A-Za-z0-9_.,]*$",
        description=(
            "Comma-separated modules each warm engine imports besides Prefect and the work "
            "pool's flow modules. Every driftloop flow calls MLflow, and MLflow's first request "
            "in a process loads its request-header plugins, among them Feast's, which imports "
            "all of Feast (~5 s here); most flows also resolve a DVC revision."
        ),
    )
    profile: Literal["embedded", "server"] = Field(
        default="embedded",
        description=(
            "Which stack `driftloop up` runs: `embedded` (SQLite-backed Prefect and MLflow, "
            "Feast's SQLite online store) or `server` (PostgreSQL-backed Prefect and MLflow, "
            "Redis as Feast's online store; the same flows, tasks and blocks)."
        ),
    )
    postgres_port: int = Field(
        default=5442,
        ge=1,
        le=65535,
        description=(
            "Port of the PostgreSQL server `up` starts on loopback for the server profile "
            "(not PostgreSQL's 5432, which a system server may hold). Not started when both "
            "PREFECT_SERVER_DATABASE_CONNECTION_URL and MLFLOW_BACKEND_STORE_URI name a server."
        ),
    )
    redis_port: int = Field(
        default=6390,
        ge=1,
        le=65535,
        description=(
            "Port of the Redis server `up` starts on loopback for the server profile (not "
            "Redis's 6379, which is the Ray head's). Not started when DRIFTLOOP_FEAST_REDIS is set."
        ),
    )
    feast_redis: SecretStr | None = Field(
        default=None,
        description=(
            "Feast's Redis connection string (`host:port[,password=...][,ssl=true]`) for the "
            "server profile's online store; feature_repo/feature_store.server.yaml reads it. "
            "Unset: the Redis server `up` starts."
        ),
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description=(
            "The MLflow URL the default `driftloop-mlflow` block gets (`driftloop setup`, e.g. "
            "`http://mlflow:5000` in compose). Unset: the MLflow server `up` starts."
        ),
    )
    ray_port: int = Field(
        default=6379,
        ge=1,
        le=65535,
        description=(
            "Port of the Ray head `driftloop up` starts (its GCS; Ray's own default), which "
            "the flow runs attach to. Not used when RAY_ADDRESS names another cluster. Not "
            f"{RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}: Ray keeps those for its workers."
        ),
    )
    serving: bool = Field(
        default=True,
        description=(
            "Whether `driftloop up` runs the serving application of the champion (Ray Serve, "
            "on the stack's Ray). Its port and limits are in the `driftloop-serving` block."
        ),
    )
    serving_port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="Port the default `driftloop-serving` block gets (`driftloop setup`).",
    )
    serving_host: str = Field(
        default="127.0.0.1",
        description=(
            "Interface the default `driftloop-serving` block binds (compose: 0.0.0.0, so that "
            "other containers reach Serve's proxy on the Ray head)."
        ),
    )
    serving_url: str | None = Field(
        default=None,
        description=(
            "The `url` of the default `driftloop-serving` block (compose: "
            "`http://ray-head:8000`). Unset: http://<serving_host>:<serving_port>."
        ),
    )
    prediction_log_url: SecretStr | None = Field(
        default=None,
        description=(
            "The `prediction_log_url` of the default `driftloop-serving` block: a database "
            "(SQLAlchemy URL) for the serving application's prediction log. Unset: the "
            "server profile's local PostgreSQL (database `served`) when it runs one, else "
            "parquet files in the state folder."
        ),
    )
    notify_block: str | None = Field(
        default=None,
        description=(
            "The notification block the automations send through, as `<block type slug>/"
            "<name>` (e.g. `slack-webhook/team-alerts`). Unset: driftloop's webhook block "
            "to the local receiver."
        ),
        pattern=r"^[a-z0-9-]+/[^/]+$",
    )
    renotify_minutes: int = Field(
        default=360,
        ge=1,
        description=(
            "A person hears about drift, skipped retraining or degraded performance of a model "
            "at most once per this many minutes, however often the checks report it."
        ),
    )

    @field_validator("ray_port")
    @classmethod
    def _ray_port_outside_worker_ports(cls, port: int) -> int:
        low, high = RAY_WORKER_PORTS
        if low <= port <= high:
            raise ValueError(
                f"{port} is among the ports Ray keeps for its workers ({low}-{high}); "
                "choose another"
            )
        return port

    # --- derived locations -------------------------------------------------------------
    @cached_property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @cached_property
    def results_dir(self) -> Path:
        """Persisted Prefect results: read and written by the flow process and Ray workers."""
        return self.home / "results"

    @cached_property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @cached_property
    def mlflow_backend_uri(self) -> str:
        """The embedded profile's MLflow backend store (the server profile's is PostgreSQL:
        `driftloop.app.server_profile`)."""
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @cached_property
    def postgres_dir(self) -> Path:
        """The server profile's local PostgreSQL cluster (`data/`)."""
        return self.home / "postgres"

    @cached_property
    def redis_dir(self) -> Path:
        """The server profile's local Redis: its snapshot."""
        return self.home / "redis"

    @property
    def feast_config_file(self) -> str:
        """The feature repo's Feast configuration for this profile: the embedded one keeps the
        online store in SQLite, the server one in Redis."""
        return "feature_store.server.yaml" if self.profile == "server" else "feature_store.yaml"

    @property
    def feast_redis_connection(self) -> str:
        """Feast's Redis connection string: DRIFTLOOP_FEAST_REDIS, else the local Redis."""
        if self.feast_redis is not None:
            return self.feast_redis.get_secret_value()
        return f"{self.host}:{self.redis_port}"

    @cached_property
    def mlflow_artifacts_dir(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @cached_property
    def ray_dir(self) -> Path:
        return self.home / "ray"

    @cached_property
    def data_registry_dir(self) -> Path:
        """The demo's git + DVC data registry."""
        return self.home / "data" / "registry"

    @cached_property
    def dvc_remote_dir(self) -> Path:
        """The demo registry's DVC remote (a local directory remote)."""
        return self.home / "data" / "dvc-remote"

    @cached_property
    def feast_dir(self) -> Path:
        """Feast registry, online store and offline parquet sources of the demo feature repo."""
        return self.home / "feast"

    @cached_property
    def predictions_dir(self) -> Path:
        return self.home / "predictions"

    @cached_property
    def served_dir(self) -> Path:
        """The serving application's prediction log (unless its block names another folder)."""
        return self.home / "served"

    @cached_property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @cached_property
    def notifications_file(self) -> Path:
        """Where the local receiver writes each notification it gets (one JSON per line)."""
        return self.logs_dir / "notifications.jsonl"

    @property
    def notify_url(self) -> str:
        return f"http://{self.host}:{self.notify_port}/notify"

    @cached_property
    def run_dir(self) -> Path:
        """PID files of the processes ``driftloop up`` started."""
        return self.home / "run"

    @property
    def warm_import_modules(self) -> tuple[str, ...]:
        """`warm_imports` as module names."""
        return tuple(m for m in self.warm_imports.split(",") if m)

    @cached_property
    def worker_name(self) -> str:
        """Name of this service's Prefect worker: flow runs record it (label
        `prefect.worker.name`), which tells this machine's runs from other machines'."""
        import hashlib
        import socket

        digest = hashlib.md5(str(self.home.resolve()).encode()).hexdigest()[:8]
        return f"driftloop-{socket.gethostname()}-{digest}"

    @property
    def feature_repo_dir(self) -> Path:
        return self.feature_repo

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_ui_url}/api"

    @property
    def mlflow_url(self) -> str:
        """The MLflow server `up` starts."""
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def mlflow_tracking_url(self) -> str:
        """Where flows reach MLflow: DRIFTLOOP_MLFLOW_TRACKING_URI, else `mlflow_url`."""
        return self.mlflow_tracking_uri or self.mlflow_url

    @property
    def ray_address(self) -> str:
        """The embedded Ray head, as flow runs reach it (`RAY_ADDRESS`)."""
        return f"{self.host}:{self.ray_port}"

    def process_env(self) -> dict[str, str]:
        """Environment for every process driftloop starts: quiet, offline, state under home.

        Values already set by the user win, so that a user can point at a remote Prefect API or
        a Ray cluster without code changes.
        """
        env = dict(os.environ)
        defaults = {
            **TELEMETRY_OFF,
            "DRIFTLOOP_HOME": str(self.home),
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_UI_URL": self.prefect_ui_url,
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.results_dir),
            # DVC keeps a per-machine cache of repo state; keep it with our state, not in /var/tmp.
            "DVC_SITE_CACHE_DIR": str(self.home / "cache" / "dvc"),
            "MPLCONFIGDIR": str(self.home / "cache" / "matplotlib"),
        }
        for key, value in defaults.items():
            env.setdefault(key, value)
        # Telemetry switches are not a preference: they are forced.
        env.update(TELEMETRY_OFF)
        return env


def get_settings() -> DriftloopSettings:
    """Settings as the current environment defines them."""
    return DriftloopSettings()


def quiet_environment() -> None:
    """Switch telemetry off in this process (call before importing the heavy libraries)."""
    os.environ.update(TELEMETRY_OFF)
