"""Ray benchmark: N model-fitting trials (~2 s each) run sequentially in one process, then as
Prefect tasks on the RayTaskRunner against a Ray cluster that is already running.

    make bench-ray          # or: .venv/bin/python bench/ray_bench.py --trials 16

Prints the speedup, parallel efficiency against the CPUs Ray has, the per-task orchestration
overhead (Prefect + Ray), and the time to start a local Ray.
Targets (measured, never asserted in tests): speedup >= 1.7x on 2 CPUs (efficiency >= 85%);
overhead <= 100 ms per task.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import PrefectServer, configure, median, table

LOCAL_RAY_START = """
import os, time, sys
os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
import ray
started = time.perf_counter()
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=sys.argv[1])
print(time.perf_counter() - started)
ray.shutdown()
"""


def trial_inputs(rows: int):
    """A churn training frame and the typed columns a trial needs (no Feast, no DVC)."""
    import pandas as pd

    from driftloop.app.demo.churn import ACTIVITY_COLUMNS, PROFILE_COLUMNS, generate_batch
    from driftloop.core.contracts import FeatureColumn, ResolvedFeatures, TableSchema

    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch = generate_batch(batch=0, rows=rows, start=start, end=start + timedelta(days=28))
    keys = ["customer_id", "event_timestamp", "created"]
    frame = pd.concat(
        [batch.labels, batch.profile.drop(columns=keys), batch.activity.drop(columns=keys)],
        axis=1,
    )
    columns = tuple(
        FeatureColumn(
            name=name,
            ref=f"v:{name}",
            feast_type="-",
            kind="categorical" if frame[name].dtype == object else "numeric",
        )
        for name in (*PROFILE_COLUMNS, *ACTIVITY_COLUMNS)
    )
    features = ResolvedFeatures(
        project="bench", feature_service=None, columns=columns, fingerprint="bench"
    )
    schema = TableSchema(
        entity_columns=("customer_id",), timestamp_column="event_timestamp", label_column="churned"
    )
    return frame, features, schema


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="target fit time per trial")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = configure("bench-ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"

    import ray
    from prefect import flow, task
    from prefect_ray.context import remote_options
    from threadpoolctl import threadpool_limits

    from driftloop.core.params import RandomForestSpec
    from flows.task_runners import DriftloopRayTaskRunner
    from tasks.evaluate_trial import evaluate_trial, fit_and_score
    from tests.helpers import RayNodes

    # A trial is one CPU's worth of fitting: Ray gives each `num_cpus=1` task one thread
    # (OMP_NUM_THREADS=1), so the sequential baseline is held to one thread as well.
    # Size the data so that one fit takes about --seconds on one core (after a warm-up fit).
    # A random forest with fixed parameters takes the same time whatever its seed, so the
    # batch divides evenly over the CPUs (gradient boosting's early stopping would not).
    spec = RandomForestSpec(n_estimators=60, max_depth=12, min_samples_leaf=5, max_features=0.5)
    rows = 20_000
    frame, features, schema = trial_inputs(rows)
    with threadpool_limits(limits=1):
        fit_and_score(frame, features, schema, spec, 0.2, 0)
        took = _timed(lambda: fit_and_score(frame, features, schema, spec, 0.2, 0))
    rows = int(rows * args.seconds / took)
    frame, features, schema = trial_inputs(rows)
    print(f"{rows} rows per trial (one fit ~{args.seconds:.1f}s on one core)", flush=True)

    @flow(task_runner=DriftloopRayTaskRunner())
    def trials_on_ray(seed: int) -> list[float]:
        """The search's way: data shared once, one task per trial. Distinct seeds per run, so
        every trial really fits (no cache hits). Returns each trial's in-task fit time."""
        from flows.task_runners import current_runner

        data = current_runner().share(frame)
        with remote_options(num_cpus=1):
            futures = [
                evaluate_trial.submit(
                    i, "bench", data, features, schema, spec, 0.2, "roc_auc", seed * 1000 + i
                )
                for i in range(args.trials)
            ]
        return [f.result().seconds for f in futures]

    def _sequential(seed: int) -> None:
        for i in range(args.trials):
            fit_and_score(frame, features, schema, spec, 0.2, seed * 1000 + i)

    @task(name="noop")
    def noop(i: int) -> int:
        return i

    @flow(task_runner=DriftloopRayTaskRunner())
    def noop_on_ray(count: int) -> tuple[float, float]:
        """What a task costs beyond its own work: (1) submit-to-result latency of a task that
        does nothing, one at a time; (2) CPU-seconds per task when many no-op tasks run in
        parallel on all CPUs (wall time x CPUs / tasks)."""
        started = time.perf_counter()
        with remote_options(num_cpus=1):
            for i in range(count):
                noop.submit(i).result()
        latency = (time.perf_counter() - started) / count
        started = time.perf_counter()
        with remote_options(num_cpus=1):
            futures = [noop.submit(i) for i in range(count * 4)]
        [f.result() for f in futures]
        per_task = (time.perf_counter() - started) * cpus / (count * 4)
        return latency, per_task

    ray_temp = Path(tempfile.mkdtemp(prefix="dlbench-", dir="/tmp"))
    nodes = RayNodes(temp_dir=ray_temp, log_dir=root / "logs")
    try:
        with PrefectServer(root):
            address = nodes.start_head(num_cpus=os.cpu_count() or 2)
            ray.init(address=address, namespace="prefect", log_to_driver=False)
            cpus = ray.cluster_resources()["CPU"]
            trials_on_ray(0)  # untimed: starts this job's Ray workers and imports
            sequential, parallel, roundtrips, fits, overheads = [], [], [], [], []
            for repeat in range(1, args.repeats + 1):
                with threadpool_limits(limits=1):
                    sequential.append(_timed(lambda r=repeat: _sequential(r)))
                started = time.perf_counter()
                fits.append(sum(trials_on_ray(repeat)))
                parallel.append(time.perf_counter() - started)
                latency, per_task = noop_on_ray(20)
                roundtrips.append(latency)
                overheads.append(per_task)
                print(
                    f"  repeat {repeat}: sequential {sequential[-1]:.2f}s, ray {parallel[-1]:.2f}s",
                    flush=True,
                )
            ray.shutdown()
            starts = []
            for _ in range(args.repeats):
                done = subprocess.run(
                    [sys.executable, "-c", LOCAL_RAY_START, str(ray_temp / "local")],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                starts.append(float(done.stdout.strip().splitlines()[-1]))
    finally:
        nodes.stop()

    seq, par, fit = median(sequential), median(parallel), median(fits)
    speedup = seq / par
    efficiency = speedup / cpus
    overhead_ms = median(overheads) * 1000
    # What the parallel run lost beyond orchestration: fits run slower side by side.
    slowdown = fit / seq - 1
    print()
    print(
        table(
            [
                ("measurement (median)", "value", "target"),
                (f"{args.trials} trials sequentially, one process", f"{seq:.2f} s", ""),
                (f"{args.trials} trials on RayTaskRunner ({cpus:g} CPUs)", f"{par:.2f} s", ""),
                ("speedup", f"{speedup:.2f}x", ">= 1.7x on 2 CPUs"),
                ("parallel efficiency (speedup / CPUs)", f"{efficiency:.0%}", ">= 85%"),
                (
                    "orchestration overhead per task (Prefect + Ray)",
                    f"{overhead_ms:.0f} ms",
                    "<= 100 ms",
                ),
                ("fit time inside Ray tasks vs one process", f"{slowdown:+.0%}", ""),
                (
                    "no-op task round trip, submit to result",
                    f"{median(roundtrips) * 1000:.0f} ms",
                    "",
                ),
                ("start a local Ray (ray.init, 2 CPUs)", f"{median(starts):.2f} s", ""),
            ],
            f"Ray benchmark: {args.trials} trials of ~{args.seconds:g} s, {args.repeats} repeats",
        )
    )
    return 0


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
