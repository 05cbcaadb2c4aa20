"""compose.yaml and the Dockerfile, checked without a container engine.

Nothing is built or started here: the checks read the files. Debian's docker-compose (1.29, a
Python implementation) validates compose.yaml against the Compose schema offline; the rest
holds the files to the project's own sources of truth: the Makefile's uv version, uv.lock,
the telemetry switches in `driftloop.core.settings`, the work pool's name.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.core import names
from driftloop.core.settings import PROJECT_ROOT, TELEMETRY_OFF

COMPOSE_FILE = PROJECT_ROOT / "compose.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
MAKEFILE = PROJECT_ROOT / "Makefile"

IMAGE = "driftloop:latest"
STATE_MOUNT = "driftloop-state:/app/.driftloop"
# Services that run a stock image and need nothing else to start.
STOCK_SERVICES = {"postgres", "redis"}
PROJECT_SERVICES = {"prefect-server", "mlflow", "ray-head", "setup", "worker", "serving"}
ONE_SHOT = {"setup"}
NO_DEPENDENCIES = STOCK_SERVICES | {"ray-head"}
# A ${VARIABLE} reference, optionally with a default or a required-value error.
REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:]?[-?][^}]*)?\}")


@functools.cache
def compose() -> dict[str, Any]:
    """compose.yaml as Compose reads it (PyYAML resolves the `<<` merges of the x- anchors)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@functools.cache
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def makefile_uv_version() -> str:
    match = re.search(r"^UV_VERSION\s*:?=\s*(\S+)\s*$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, "the Makefile no longer sets UV_VERSION"
    return match.group(1)


# --- compose.yaml --------------------------------------------------------------------------
def test_services_are_the_stack() -> None:
    assert set(services()) == STOCK_SERVICES | PROJECT_SERVICES
    assert "version" not in compose(), "Compose Specification files have no `version:` key"


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        if name in ONE_SHOT:
            assert "healthcheck" not in service, f"{name} is one-shot: nothing to check"
            assert service.get("restart") == "no", f"{name} is one-shot: it must not restart"
        else:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health() -> None:
    for name, service in services().items():
        if name in NO_DEPENDENCIES:
            assert "depends_on" not in service, f"{name} should start on its own"
            continue
        depends_on = service.get("depends_on")
        assert depends_on, f"{name} has no depends_on"
        for dependency, spec in depends_on.items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert spec == {"condition": expected}, f"{name} -> {dependency}: {spec}"


def test_project_services_run_the_one_project_image() -> None:
    built = [name for name, service in services().items() if "build" in service]
    assert built == ["prefect-server"], f"the project image is built by one service: {built}"
    assert services()["prefect-server"]["build"] == "."
    for name in PROJECT_SERVICES:
        service = services()[name]
        assert service["image"] == IMAGE, name
        assert STATE_MOUNT in service["volumes"], f"{name} does not mount the state volume"
        if name not in built:
            # Tagged by the build, never in a registry: a pull could only fail.
            assert service.get("pull_policy") == "never", name
    for name in STOCK_SERVICES:
        assert services()[name]["image"] != IMAGE


def test_the_state_volume_is_driftloop_home() -> None:
    assert dockerfile_env()["DRIFTLOOP_HOME"] == STATE_MOUNT.split(":", 1)[1]


def test_ports_are_published_on_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_worker_healthcheck_reads_the_pool_it_serves() -> None:
    """The worker's health check asks the server for heartbeats on the pool `driftloop worker`
    serves by default."""
    check = " ".join(services()["worker"]["healthcheck"]["test"])
    assert f"/work_pools/{names.WORK_POOL}/workers/filter" in check


def test_no_password_literal() -> None:
    """Passwords come from the environment: every password value and every URL's password
    is a ${...} reference."""
    text = COMPOSE_FILE.read_text()
    for name, service in services().items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment as a mapping, please"
        for key, value in environment.items():
            if "PASSWORD" in key.upper():
                assert REFERENCE.fullmatch(str(value)), f"{name}: {key} is a literal"
    passwords = re.findall(r"://[^:/@\s]+:([^@\n]+)@", text)
    assert passwords, "no URL with credentials found: has the database set-up changed?"
    for password in passwords:
        assert REFERENCE.fullmatch(password), f"a URL holds the password literal {password!r}"


def docker_compose(*args: str, password: str | None) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail(
            "docker-compose is not on the PATH: `make test` installs it (Debian's "
            "docker-compose package), which validates compose.yaml offline"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.pop("POSTGRES_PASSWORD", None)
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.run(
        [executable, "--project-directory", str(PROJECT_ROOT), "-f", str(COMPOSE_FILE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_validates_the_file() -> None:
    result = docker_compose("config", "-q", password="compose-config-check")
    assert result.returncode == 0, result.stderr


def test_docker_compose_requires_the_password() -> None:
    result = docker_compose("config", "-q", password=None)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr


# --- Dockerfile ----------------------------------------------------------------------------
def test_dockerfile_installs_the_makefiles_uv() -> None:
    version = makefile_uv_version()
    assert ("ARG", f"UV_VERSION={version}") in dockerfile(), (
        f"the Dockerfile's ARG UV_VERSION should be the Makefile's {version}"
    )
    installs = [a for k, a in dockerfile() if k == "RUN" and "pip install" in a]
    assert any("uv==${UV_VERSION}" in a for a in installs), "uv is not installed at UV_VERSION"


def test_dockerfile_syncs_from_the_lock_dependencies_first() -> None:
    steps = [f"{keyword} {arguments}" for keyword, arguments in dockerfile()]

    def index(fragment: str) -> int:
        found = [i for i, step in enumerate(steps) if fragment in step]
        assert len(found) == 1, f"expected one step with {fragment!r}, found {len(found)}"
        return found[0]

    manifests = index("COPY pyproject.toml uv.lock ./")
    dependencies = index("uv sync --locked --no-dev --no-install-project")
    project = index("COPY . .")
    installs = [
        i
        for i, step in enumerate(steps)
        if "uv sync --locked --no-dev" in step and "--no-install-project" not in step
    ]
    assert len(installs) == 1, "expected one step that installs the project from the lock"
    assert manifests < dependencies < project < installs[0]
    assert not any("uv sync" in step and "--locked" not in step for step in steps)
    assert not any(re.search(r"\buv (pip|add|lock)\b", step) for step in steps)


def test_dockerfile_telemetry_is_the_settings() -> None:
    env = dockerfile_env()
    assert {key: env.get(key) for key in TELEMETRY_OFF} == TELEMETRY_OFF


def test_dockerfile_environment() -> None:
    env = dockerfile_env()
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["PATH"].startswith("/app/.venv/bin:")
    assert ("FROM", "python:3.11-slim-bookworm") in dockerfile()
    assert ("WORKDIR", "/app") in dockerfile()
    assert not any(keyword in {"CMD", "ENTRYPOINT"} for keyword, _ in dockerfile())
    users = [arguments for keyword, arguments in dockerfile() if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the image runs as root"
    assert any(k == "RUN" and re.search(r"apt-get install .*\bgit\b", a) for k, a in dockerfile())


def test_dockerignore_keeps_what_the_build_needs() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".driftloop", ".git"} <= ignored
    # hatchling reads README.md for the package metadata; the rest is the project.
    needed = {"pyproject.toml", "uv.lock", "README.md", "prefect.yaml", "feature_repo"}
    needed |= {"driftloop", "flows", "tasks", "blocks", "deployments"}
    assert not needed & ignored
    assert all(Path(PROJECT_ROOT, path).exists() for path in needed)
