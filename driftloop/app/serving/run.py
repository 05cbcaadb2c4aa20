"""`driftloop serve`: deploy the serving application on Ray Serve and keep it up.

It attaches to the Ray the flows use: the `driftloop-ray` block's `address`, else
`RAY_ADDRESS` (`make up` sets it to its own Ray head). It starts Serve's HTTP proxy on the
`driftloop-serving` block's host and port, deploys the application, and then watches it. On
SIGTERM or SIGINT it deletes the application (the replicas write their last prediction-log
batch) and, if no other application is left on the cluster, shuts Serve down. If the cluster
stops answering it exits with code 1, so the supervisor restarts it.

`make up` runs it as its `serving` component; on a machine without `up`, run it beside a
worker: `PREFECT_API_URL=... RAY_ADDRESS=... driftloop serve`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from driftloop.core import names
from driftloop.core.errors import BlockConfigurationError
from driftloop.core.settings import TELEMETRY_OFF, get_settings, quiet_environment

WATCH_S = 5.0
# Consecutive failed looks at the cluster after which the process gives up (and is restarted).
WATCH_FAILURES = 3


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set `stop`."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def serve_until(stop: threading.Event, block: str = names.DEFAULT_BLOCK) -> int:
    """Deploy the application and keep it until `stop` is set. Returns an exit code."""
    from blocks.feast import FeastFeatureStore
    from blocks.mlflow import MlflowTracking
    from blocks.ray import RayCluster
    from blocks.serving import ServingConfig

    config = ServingConfig.load_named(block)
    tracking = MlflowTracking.load_named(config.mlflow_block)
    feast = FeastFeatureStore.load_named(config.feast_block)
    cluster = RayCluster.load_named(config.ray_block)
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise BlockConfigurationError(
            "There is no Ray to serve on: set `address` in the driftloop-ray block or "
            "RAY_ADDRESS (`make up` runs a Ray head and sets it)"
        )
    if cluster.auth_token:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = cluster.auth_token.get_secret_value()

    import ray
    from ray import serve

    from driftloop.app.serving.app import APP_NAME, build

    # The replicas are Ray workers: quiet, and with what the Feast configuration expands.
    env_vars = dict(TELEMETRY_OFF)
    env_vars.update({k: os.environ[k] for k in feast.config_variables() if k in os.environ})
    ray.init(
        address=address,
        namespace="driftloop-serving",
        log_to_driver=False,
        runtime_env={"env_vars": env_vars},
        **cluster.init_kwargs,
    )
    # `ray.init` makes SIGTERM exit the driver at once (sys.exit); this process must delete
    # its application first, so it takes the signals back.
    stop_on_signals(stop)
    try:
        serve.start(
            http_options={"host": config.host, "port": config.port},
            # One log line per request costs the replica about a millisecond; errors are
            # still logged, and the metrics count every request.
            logging_config={"enable_access_log": False},
        )
        log_dir = get_settings().served_dir
        serve.run(build(config, tracking, feast, log_dir), name=APP_NAME, route_prefix="/")
        where = config.prediction_log(log_dir).where(tracking.registered_model_name)
        print(
            f"Serving {tracking.registered_model_name}@{names.ALIAS_CHAMPION} at "
            f"{config.base_url}/predict (prediction log: {where})",
            flush=True,
        )
        failures = 0
        while not stop.wait(WATCH_S):
            try:
                status = serve.status().applications.get(APP_NAME)
                failures = 0 if status is not None else failures + 1
            except Exception as exc:
                failures += 1
                print(f"The Ray cluster at {address} did not answer: {exc}", flush=True)
            if failures >= WATCH_FAILURES:
                print(f"Serving stops: {APP_NAME} is gone from the Ray cluster at {address}")
                return 1
        serve.delete(APP_NAME)
        if not serve.status().applications:
            serve.shutdown()
        return 0
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    parser = argparse.ArgumentParser(prog="driftloop serve", description=__doc__)
    parser.add_argument(
        "--block", default=names.DEFAULT_BLOCK, help="the driftloop-serving block to use"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        return serve_until(stop, args.block)
    except BlockConfigurationError as exc:
        print(f"driftloop serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
