# driftloop's image: one image for every driftloop process (Prefect server, MLflow server, Ray
# nodes, the one-shot set-up, the worker and its flow runs); each compose service or Kubernetes
# pod names its command, so there is no CMD. Python dependencies: exactly uv.lock's (`--locked`),
# without the dev group.
#   docker compose build          (or: docker build -t driftloop:latest .)
FROM python:3.11-slim-bookworm

# git: DVC (the demo data registry is a git repository).
# wget: KubeRay's default liveness and readiness probes run it in Ray containers (docs/topologies.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git wget \
 && rm -rf /var/lib/apt/lists/*

# The Makefile's UV_VERSION (tests/test_compose.py checks that they agree).
ARG UV_VERSION=0.13.8
RUN pip install --no-cache-dir --root-user-action=ignore "uv==${UV_VERSION}"

# Telemetry off in every process: the Makefile's exports, driftloop.core.settings.TELEMETRY_OFF
# (tests/test_compose.py checks that they agree). MLflow accepts only the literal "true".
ENV DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    RAY_USAGE_STATS_ENABLED=0 \
    DVC_NO_ANALYTICS=1 \
    EVIDENTLY_DISABLE_TELEMETRY=1 \
    ITERATIVE_DO_NOT_TRACK=1 \
    ORT_DISABLE_TELEMETRY=1

# uv: the image's own Python 3.11, never a downloaded one; the environment in /app/.venv; no
# package cache left in a layer; bytecode compiled once here, not by each container at start.
# UV_SYSTEM_CERTS as in the Makefile: a build behind a TLS-inspecting proxy trusts the system
# store. DRIFTLOOP_HOME: the state folder, a volume (compose: driftloop-state).
ENV UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_SYSTEM_CERTS=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH \
    DRIFTLOOP_HOME=/app/.driftloop

WORKDIR /app

# The dependencies first, in a layer of their own: rebuilt only when pyproject.toml or uv.lock
# change, not on every code change.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project

# Then the project, installed editable (uv's default): driftloop finds feature_repo/ and
# prefect.yaml next to its package (driftloop.core.settings.PROJECT_ROOT), so the code must stay
# in /app rather than be copied into site-packages. Ray workers import the flows from here too.
COPY . .
RUN uv sync --locked --no-dev \
 && python -m compileall -q driftloop flows tasks blocks deployments

# A non-root user with a numeric id (Kubernetes' runAsNonRoot can verify only a numeric USER).
# It owns the state folder and nothing else: a named volume mounted on an image folder starts as
# a copy of it, owner included, so the volume is writable; the code and .venv stay read-only.
RUN useradd --create-home --uid 10001 --user-group driftloop \
 && mkdir -p /app/.driftloop \
 && chown driftloop:driftloop /app/.driftloop
USER 10001:10001
VOLUME ["/app/.driftloop"]
