"""The server profile: PostgreSQL-backed Prefect and MLflow, Redis as Feast's online store.

`DRIFTLOOP_PROFILE=server driftloop up` (`make up-server`) runs the same service as the
embedded profile, on the databases a deployment past one machine uses. Each database is
either given by URL, through the component's own setting, or started here, on loopback, as
a supervised component with its data in the state folder:

- Prefect's database: `PREFECT_SERVER_DATABASE_CONNECTION_URL` (Prefect's own setting), else
  the database `prefect` of a local PostgreSQL;
- MLflow's backend store: `MLFLOW_BACKEND_STORE_URI` (MLflow's own setting), else the
  database `mlflow` of that PostgreSQL;
- Feast's online store: `DRIFTLOOP_FEAST_REDIS` (which `feature_store.server.yaml` reads),
  else a local Redis;
- the serving application's prediction log: `DRIFTLOOP_PREDICTION_LOG_URL`, else the database
  `served` of the local PostgreSQL when one runs for the others, else parquet files.

The local PostgreSQL is Debian's (`/usr/lib/postgresql/<version>/bin`), initialised once with
`initdb` under `<state>/postgres/data`, trusting connections from loopback only; the local
Redis is Debian's `redis-server`, its snapshot under `<state>/redis`. `make up-server`
installs both packages if they are missing.

PostgreSQL refuses to run as root. Run by root (a container, CI), it runs in a user namespace
of its own (`unshare --user`) in which its user is the unprivileged `postgres` (or `nobody`):
outside that namespace it is still root, so it can reach a state folder under a path only
root may enter (`/root/...`), and its files stay root's, like the rest of the state folder.

URLs are never logged with their password (`redacted`).

Example:
    >>> redacted("postgresql+asyncpg://prefect:s3cret@db:5432/prefect")
    'postgresql+asyncpg://prefect:***@db:5432/prefect'
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from driftloop.app.supervisor import (
    Component,
    HealthCheck,
    Log,
    StartupError,
    stop_processes,
    tail,
)
from driftloop.core.settings import DriftloopSettings

POSTGRES = "postgres"
REDIS = "redis"
# The role `initdb` creates, which owns the local cluster's databases.
POSTGRES_USER = "driftloop"
PREFECT_DATABASE = "prefect"
MLFLOW_DATABASE = "mlflow"
SERVED_DATABASE = "served"
# Prefect's setting for its database, and the name it had before Prefect 3.1 (still read).
PREFECT_DATABASE_SETTINGS = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)
MLFLOW_DATABASE_SETTING = "MLFLOW_BACKEND_STORE_URI"
FEAST_REDIS_SETTING = "DRIFTLOOP_FEAST_REDIS"
# The Debian packages that provide the local servers (`make up-server` installs them).
DEBIAN_PACKAGES = ("postgresql", "redis-server")


def redacted(url: str) -> str:
    """A database URL with its password masked, for messages.

    Example:
        >>> redacted("postgresql://db:5432/mlflow")
        'postgresql://db:5432/mlflow'
    """
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: nothing of it may be shown
        return "*** (not a database URL)"


def local_postgres_url(settings: DriftloopSettings, database: str, driver: str = "") -> str:
    """A database of the local PostgreSQL, as SQLAlchemy names it (`driver`: `+asyncpg`).

    Example:
        >>> local_postgres_url(DriftloopSettings(), "prefect", "+asyncpg")
        'postgresql+asyncpg://driftloop@127.0.0.1:5442/prefect'
    """
    return (
        f"postgresql{driver}://{POSTGRES_USER}@{settings.host}:{settings.postgres_port}/{database}"
    )


@dataclass(frozen=True)
class Databases:
    """Where the server profile's Prefect and MLflow keep their state, and which local
    servers `up` must start for that."""

    prefect_url: str
    mlflow_url: str
    # The databases `up` creates in the local PostgreSQL: the ones not given by URL.
    local_databases: tuple[str, ...]
    local_redis: bool
    # The serving application's prediction log; None: parquet files in the state folder.
    prediction_log_url: str | None = None

    @property
    def local_postgres(self) -> bool:
        return bool(self.local_databases)

    @classmethod
    def of(cls, settings: DriftloopSettings, env: dict[str, str]) -> Databases:
        """The URLs the caller gave (the components' own settings), else the local servers.

        Example:
            >>> dbs = Databases.of(DriftloopSettings(), {"MLFLOW_BACKEND_STORE_URI": "postgresql://db/m"})
            >>> dbs.mlflow_url, dbs.local_databases
            ('postgresql://db/m', ('prefect',))
        """
        given_prefect = next((env[k] for k in PREFECT_DATABASE_SETTINGS if env.get(k)), None)
        given_mlflow = env.get(MLFLOW_DATABASE_SETTING) or None
        given_log = settings.prediction_log_url
        local = tuple(
            name
            for name, given in ((PREFECT_DATABASE, given_prefect), (MLFLOW_DATABASE, given_mlflow))
            if given is None
        )
        # The prediction log goes to the local PostgreSQL only if one runs anyway.
        local_log = given_log is None and bool(local)
        return cls(
            prefect_url=given_prefect or local_postgres_url(settings, PREFECT_DATABASE, "+asyncpg"),
            mlflow_url=given_mlflow or local_postgres_url(settings, MLFLOW_DATABASE),
            local_databases=(*local, SERVED_DATABASE) if local_log else local,
            local_redis=settings.feast_redis is None,
            prediction_log_url=(
                given_log.get_secret_value()
                if given_log is not None
                else local_postgres_url(settings, SERVED_DATABASE)
                if local_log
                else None
            ),
        )


def postgres_bin_dir() -> Path:
    """Debian's PostgreSQL programs (the newest installed version), else `postgres` on the
    PATH. Raises StartupError naming the package to install."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    raise StartupError(
        "the server profile needs PostgreSQL and it is not installed: run `make up-server` "
        "(it installs Debian's `postgresql`), or give PREFECT_SERVER_DATABASE_CONNECTION_URL "
        "and MLFLOW_BACKEND_STORE_URI of a PostgreSQL server of yours"
    )


def _as_postgres_user() -> list[str]:
    """The prefix that runs a PostgreSQL program: nothing, unless this process is root (see
    the module docstring)."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["unshare", "--user", f"--map-user={entry.pw_uid}", f"--map-group={entry.pw_gid}"]
    raise StartupError("running as root, and there is no `postgres` or `nobody` user to map to")


def ensure_cluster(settings: DriftloopSettings) -> None:
    """`initdb` the local cluster once: UTF-8, the `driftloop` role, trust on loopback."""
    data = settings.postgres_dir / "data"
    if (data / "PG_VERSION").exists():
        return
    settings.postgres_dir.mkdir(parents=True, exist_ok=True)
    if data.exists():
        shutil.rmtree(data)  # an initdb that was interrupted: start it again
    log_file = settings.logs_dir / "postgres-initdb.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        done = subprocess.run(
            [*_as_postgres_user(), str(postgres_bin_dir() / "initdb"), "-D", str(data),
             "-U", POSTGRES_USER, "--auth=trust", "--encoding=UTF8", "--no-instructions"],
            stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise StartupError(
            f"initdb of {data} failed (exit {done.returncode}). Last lines of {log_file}:\n"
            f"{tail(log_file)}"
        )


@dataclass(frozen=True)
class PostgresAccepts(HealthCheck):
    """The server accepts a session (a listening port alone may still say "the database
    system is starting up")."""

    host: str
    port: int
    user: str = POSTGRES_USER

    def passes(self) -> bool:
        import psycopg2

        try:
            connection = psycopg2.connect(
                host=self.host, port=self.port, user=self.user, dbname="postgres",
                connect_timeout=2,
            )  # fmt: skip
        except psycopg2.Error:
            return False
        connection.close()
        return True

    def describe(self) -> str:
        return f"postgresql {self.host}:{self.port}"


@dataclass(frozen=True)
class RedisPings(HealthCheck):
    """Redis answers PING (it refuses commands while it loads its snapshot)."""

    host: str
    port: int

    def passes(self) -> bool:
        import redis

        try:
            with redis.Redis(host=self.host, port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def describe(self) -> str:
        return f"redis {self.host}:{self.port}"


def _processes_of_cluster(data: Path) -> list[int]:
    """The processes of the PostgreSQL cluster in `data`: each chdirs into its data folder.
    (Its backends run in sessions of their own, and they write their status over their
    environment, so neither the supervisor's sessions nor its service id finds them.)"""
    import psutil

    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] == "postgres" and Path(process.cwd()) == data:
                found.append(process.pid)
        except (psutil.Error, OSError):
            continue
    return found


def _stop_orphaned_backends(data: Path) -> Callable[[Log], None]:
    """After the postmaster died (`kill -9`, the OOM killer): its backends exit as soon as
    they notice, but until they have, a new postmaster refuses to start ("pre-existing shared
    memory block is still in use"). Stop the ones still there before the restart."""

    def stop(log: Log) -> None:
        stop_processes(
            lambda: _processes_of_cluster(data), term_signals=1, timeout_s=5.0,
            name="backends of the dead PostgreSQL", log=log,
        )  # fmt: skip

    return stop


def postgres(settings: DriftloopSettings, env: dict[str, str]) -> Component:
    """The local PostgreSQL server, in the foreground (`postgres -D`), on loopback.

    It is stopped with SIGINT, PostgreSQL's fast shutdown: the postmaster ends the client
    sessions, writes a checkpoint and exits after its backends, so the next start needs no
    recovery. (SIGTERM, a smart shutdown, would wait for every client to leave.) Started
    after `ensure_cluster`."""
    data = settings.postgres_dir / "data"
    return Component(
        name=POSTGRES,
        argv=[*_as_postgres_user(), str(postgres_bin_dir() / "postgres"),
              "-D", str(data), "-p", str(settings.postgres_port),
              "-c", f"listen_addresses={settings.host}",
              # TCP only: a socket path under a deep state folder can pass the 107 bytes
              # Unix allows, and every client here connects by host and port.
              "-c", "unix_socket_directories=",
              # Prefect's server and MLflow keep pools; 100 is PostgreSQL's default.
              "-c", "max_connections=100"],
        env=env,
        log_file=settings.logs_dir / f"{POSTGRES}.log",
        port=settings.postgres_port,
        health=(PostgresAccepts(settings.host, settings.postgres_port),),
        stop_signal=signal.SIGINT,
        on_exit=_stop_orphaned_backends(data.resolve()),
        startup_timeout_s=settings.startup_timeout_s,
    )  # fmt: skip


def ensure_databases(settings: DriftloopSettings, names: tuple[str, ...]) -> list[str]:
    """Create the missing databases in the local PostgreSQL; return the ones created."""
    import psycopg2

    created = []
    connection = psycopg2.connect(
        host=settings.host, port=settings.postgres_port, user=POSTGRES_USER, dbname="postgres"
    )
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
    finally:
        connection.close()
    return created


def redis(settings: DriftloopSettings, env: dict[str, str]) -> Component:
    """The local Redis server, in the foreground, on loopback: Feast's online store. It
    keeps an append-only log in the state folder, written every second: the serving
    application reads the online store on every request, and a Redis that crashed and came
    back with only its last snapshot would answer "unknown entity" for every customer
    materialized since, until the next materialization (up to 15 minutes). A crash loses at
    most the last second of writes."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartupError(
            "the server profile needs Redis and it is not installed: run `make up-server` (it "
            f"installs Debian's `redis-server`), or set {FEAST_REDIS_SETTING} to a Redis of yours"
        )
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    return Component(
        name=REDIS,
        argv=[binary, "--bind", settings.host, "--port", str(settings.redis_port),
              "--dir", str(settings.redis_dir), "--save", "300 1",
              "--appendonly", "yes", "--appendfsync", "everysec",
              "--daemonize", "no", "--protected-mode", "yes"],
        env=env,
        log_file=settings.logs_dir / f"{REDIS}.log",
        port=settings.redis_port,
        health=(RedisPings(settings.host, settings.redis_port),),
        startup_timeout_s=settings.startup_timeout_s,
    )  # fmt: skip
