"""Ray benchmark: prefect-ray's stock RayTaskRunner against DriftloopRayTaskRunner, side by side
in one run, on a Ray cluster that is already running.

    make bench-ray          # or: .venv/bin/python bench/ray_bench.py --trials 16
    .venv/bin/python bench/ray_bench.py --trials 4 --seconds 0.5 --repeats 1   # a quick look

For each runner: N model-fitting trials (~2 s each) as Prefect tasks, against the same trials run
one after another in one process (speedup, parallel efficiency against the CPUs Ray has), and the
orchestration overhead of a task that does nothing (Prefect + Ray). Apart from both, what this
machine allows: the same fit in plain Ray tasks (no Prefect), one alone and then one per CPU side
by side. Fits that slow down side by side (memory bandwidth, shared caches) cap the efficiency
whatever the orchestration; the table reports that ceiling, and how much of it each runner
reaches. Each repeat measures both runners back to back, alternating which goes first. Also the
time to start a local Ray.

Targets (measured, never asserted in tests): DriftloopRayTaskRunner's overhead <= 50 ms per task;
speedup >= 1.7x on 2 CPUs (efficiency >= 85%).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import PrefectServer, configure, median

LOCAL_RAY_START = """
import os, time, sys
os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
import ray
started = time.perf_counter()
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=sys.argv[1])
print(time.perf_counter() - started)
ray.shutdown()
"""

# The two runners, in the order of the table's columns.
STOCK, DRIFTLOOP = "stock", "driftloop"


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="target fit time per trial")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--noops",
        type=int,
        default=20,
        help="no-op tasks run one at a time per repeat and runner (4x as many in parallel)",
    )
    args = parser.parse_args()
    root = configure("bench-ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"

    import ray
    from prefect import flow, task
    from prefect_ray import RayTaskRunner
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

    # Set once Ray is up: the frame in Ray's object store, shared by every trial (as the model
    # search shares it), and the CPUs Ray has.
    shared: dict[str, Any] = {}

    @task(name="noop")
    def noop(i: int) -> int:
        return i

    def make_flows(key: str, runner: type[RayTaskRunner]) -> tuple[Any, Any]:
        """The benchmark's two flows on one runner."""

        @flow(name=f"ray-bench-trials-{key}", task_runner=runner())
        def trials_on_ray(seed: int) -> list[float]:
            """The search's way: data shared once, one task per trial. Distinct seeds per run
            and runner, so every trial really fits (no cache hits). Returns each trial's
            in-task fit time. The flow reaches the data through `shared` (a reference into
            Ray's object store), never the frame itself: every task run's context carries the
            flow object, closure included, so a closure over the frame would pickle it into
            every task (the model search's flow is a module-level function: no closure)."""
            data = shared["data"]
            with remote_options(num_cpus=1):
                futures = [
                    evaluate_trial.submit(
                        i, "bench", data, features, schema, spec, 0.2, "roc_auc", seed * 1000 + i
                    )
                    for i in range(args.trials)
                ]
            return [f.result().seconds for f in futures]

        @flow(name=f"ray-bench-noop-{key}", task_runner=runner())
        def noop_on_ray(count: int, cpus: float) -> tuple[float, float]:
            """What a task costs beyond its own work: (1) submit-to-result latency of a task
            that does nothing, one at a time; (2) CPU-seconds per task when many no-op tasks
            run in parallel on all CPUs (wall time x CPUs / tasks)."""
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

        return trials_on_ray, noop_on_ray

    flows = {STOCK: make_flows(STOCK, RayTaskRunner),
             DRIFTLOOP: make_flows(DRIFTLOOP, DriftloopRayTaskRunner)}  # fmt: skip

    def _sequential(seed: int) -> None:
        for i in range(args.trials):
            fit_and_score(frame, features, schema, spec, 0.2, seed * 1000 + i)

    def fit_seconds(data: Any, seed: int) -> float:
        """One trial's fit in a plain Ray task (no Prefect): its in-task time."""
        started = time.perf_counter()
        fit_and_score(data, features, schema, spec, 0.2, seed)
        return time.perf_counter() - started

    measured: dict[str, dict[str, list[float]]] = {
        key: {"parallel": [], "fits": [], "roundtrip": [], "overhead": []} for key in flows
    }
    sequential: list[float] = []
    alone: list[float] = []
    side_by_side: list[float] = []

    ray_temp = Path(tempfile.mkdtemp(prefix="dlbench-", dir="/tmp"))
    nodes = RayNodes(temp_dir=ray_temp, log_dir=root / "logs")
    try:
        with PrefectServer(root):
            address = nodes.start_head(num_cpus=os.cpu_count() or 2)
            ray.init(address=address, namespace="prefect", log_to_driver=False)
            cpus = ray.cluster_resources()["CPU"]
            width = max(2, int(cpus))  # fits side by side: one per CPU
            data = shared["data"] = ray.put(frame)
            plain_fit = ray.remote(num_cpus=1)(fit_seconds)
            ray.get(plain_fit.remote(data, 0))  # untimed: imports in a Ray worker
            for index, key in enumerate(flows):  # untimed: Ray workers, imports, exports
                trials_on_ray, noop_on_ray = flows[key]
                trials_on_ray(index)
                noop_on_ray(5, cpus)
            for repeat in range(1, args.repeats + 1):
                with threadpool_limits(limits=1):
                    sequential.append(_timed(lambda r=repeat: _sequential(r)))
                alone.append(ray.get(plain_fit.remote(data, repeat)))
                side_by_side.append(
                    median(ray.get([plain_fit.remote(data, repeat + i) for i in range(width)]))
                )
                order = list(flows) if repeat % 2 else list(reversed(flows))
                for key in order:
                    trials_on_ray, noop_on_ray = flows[key]
                    seed = repeat * 2 + list(flows).index(key)  # distinct per repeat and runner
                    started = time.perf_counter()
                    measured[key]["fits"].append(sum(trials_on_ray(seed)))
                    measured[key]["parallel"].append(time.perf_counter() - started)
                    latency, per_task = noop_on_ray(args.noops, cpus)
                    measured[key]["roundtrip"].append(latency)
                    measured[key]["overhead"].append(per_task)
                print(
                    f"  repeat {repeat}: sequential {sequential[-1]:.2f}s, "
                    + ", ".join(f"{k} {measured[k]['parallel'][-1]:.2f}s" for k in flows)
                    + ", no-op overhead "
                    + ", ".join(f"{k} {measured[k]['overhead'][-1] * 1000:.0f} ms" for k in flows),
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

    seq = median(sequential)
    # The machine's ceiling: fits one per CPU side by side, each slower than one alone.
    contention = median(side_by_side) / median(alone)
    ceiling_efficiency = 1 / contention
    result: dict[str, dict[str, float]] = {}
    for key, values in measured.items():
        parallel = median(values["parallel"])
        speedup = seq / parallel
        result[key] = {
            "parallel": parallel,
            "speedup": speedup,
            "efficiency": speedup / cpus,
            "of_ceiling": speedup / cpus / ceiling_efficiency,
            "slowdown": median(values["fits"]) / seq - 1,
            "overhead_ms": median(values["overhead"]) * 1000,
            "roundtrip_ms": median(values["roundtrip"]) * 1000,
        }
    stock, ours = result[STOCK], result[DRIFTLOOP]

    def row(label: str, metric: str, fmt: Callable[[float], str], target: str = "") -> list[str]:
        return [label, fmt(stock[metric]), fmt(ours[metric]),
                f"{ours[metric] / stock[metric]:.2f}x", target]  # fmt: skip

    def seconds(value: float) -> str:
        return f"{value:.2f} s"

    def times(value: float) -> str:
        return f"{value:.2f}x"

    def percent(value: float) -> str:
        return f"{value:.0%}"

    def millis(value: float) -> str:
        return f"{value:.0f} ms"

    print()
    print(
        _table(
            [
                [
                    "measurement (median)",
                    "prefect-ray RayTaskRunner",
                    "DriftloopRayTaskRunner",
                    "driftloop / stock",
                    "target",
                ],
                [
                    f"{args.trials} trials sequentially, one process",
                    seconds(seq),
                    seconds(seq),
                    "",
                    "",
                ],
                row(f"{args.trials} trials on the runner ({cpus:g} CPUs)", "parallel", seconds),
                row("speedup", "speedup", times, ">= 1.7x on 2 CPUs"),
                row("parallel efficiency (speedup / CPUs)", "efficiency", percent, ">= 85%"),
                row("  of the machine's ceiling (below)", "of_ceiling", percent),
                [
                    "fit time inside Ray tasks vs one process",
                    f"{stock['slowdown']:+.0%}",
                    f"{ours['slowdown']:+.0%}",
                    "",
                    "",
                ],
                row(
                    "orchestration overhead per task (no-op, parallel)",
                    "overhead_ms",
                    millis,
                    "<= 50 ms (driftloop)",
                ),
                row("no-op task round trip, submit to result", "roundtrip_ms", millis),
            ],
            f"Ray benchmark: {args.trials} trials of ~{args.seconds:g} s, {args.repeats} repeats",
        )
    )
    print()
    print(
        _table(
            [
                ["the machine (plain Ray tasks, no Prefect; median)", "value"],
                ["one fit alone", seconds(median(alone))],
                [f"{width} fits side by side, each", seconds(median(side_by_side))],
                ["side by side vs alone", f"{contention - 1:+.0%}"],
                [
                    "ceiling: parallel efficiency (alone / side by side)",
                    percent(ceiling_efficiency),
                ],
                [f"ceiling: speedup on {cpus:g} CPUs", times(cpus * ceiling_efficiency)],
                ["start a local Ray (ray.init, all CPUs)", seconds(median(starts))],
            ],
            "What orchestration cannot change",
        )
    )
    return 0


def _table(rows: list[list[str]], title: str) -> str:
    """A plain-text table with any number of columns; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [title, line]
    for i, cells in enumerate(rows):
        out.append(" | ".join(cell.ljust(widths[j]) for j, cell in enumerate(cells)).rstrip())
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
