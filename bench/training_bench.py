"""Training benchmark: cold vs warm runs through the deployment, as a user reruns from the UI;
then, in process at 100k rows, cold vs warm (cached) flow runs and the flow vs a plain script
doing the same computation without Prefect, DVC or Feast.

    make bench                    # or: .venv/bin/python bench/training_bench.py --repeats 3

Through the deployment: `driftloop up` in a temporary folder (the demo's data). Cold is the
first training `up` starts (nothing cached, the Ray head just started). Warm is the same
deployment run again with its default parameters (the UI's Run button) on unchanged data, once
the loop has settled, `--reruns` times; each is timed from created to final, and its tasks are
listed, so the table says where a warm rerun spends its time.

In process: the flow runs its default model search (16 trials on a local Ray); the plain script
runs the same trials (same sampler, seed and batches) one after another, then the same final
fit. Heavy libraries are imported and the MLflow store created before any timing starts, so
those numbers compare run time, not import or database set-up time.

Targets (measured here, never asserted in tests): warm <= 10% of cold, through the deployment;
flow <= 1.3x plain.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import PrefectServer, Stack, api_client, configure, median, table, ts

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _runs(http, api: str, body: dict) -> list[dict]:
    return http.post(f"{api}/flow_runs/filter", json=body).json()


def _wait_settled(http, api: str, timeout: float = 600) -> None:
    """Until no flow run is pending or running (the checks and scoring a promotion starts)."""
    body = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}}}
    deadline = time.monotonic() + timeout
    while _runs(http, api, body):
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not settle")
        time.sleep(1)
    time.sleep(2)  # a run an automation is about to create


def through_the_deployment(
    reruns: int,
) -> tuple[float, float, list[float], dict[str, list[float]], int]:
    """Cold and warm training runs through the running service (see the module docstring).
    Returns `make up` -> first champion, cold, the warm runs, each task's durations in them,
    and how many were started in a warm engine."""
    from driftloop.app.demo import DEMO_TRAINING_DEPLOYMENT

    stack = Stack("driftloop")
    started = time.time()
    stack.start()
    try:
        stack.wait_for("driftloop is up", 300)
        body = {"deployments": {"name": {"any_": [DEMO_TRAINING_DEPLOYMENT]}},
                "sort": "EXPECTED_START_TIME_ASC"}  # fmt: skip
        with api_client() as http:
            deadline = time.monotonic() + 900
            while not (runs := _runs(http, stack.api, body)) or runs[0]["state_type"] not in FINAL:
                if time.monotonic() > deadline:
                    raise RuntimeError("the first training did not finish")
                time.sleep(1)
            first = runs[0]
            if first["state_type"] != "COMPLETED":
                raise RuntimeError(f"the first training ended {first['state_name']}")
            cold = ts(first["end_time"]) - ts(first["created"])
            up_to_champion = ts(first["end_time"]) - started
            print(f"  make up -> first champion {up_to_champion:.1f}s; cold training {cold:.2f}s",
                  flush=True)  # fmt: skip
            warms: list[float] = []
            tasks: dict[str, list[float]] = {}
            warm_started = 0
            for i in range(reruns):
                _wait_settled(http, stack.api)
                created = http.post(
                    f"{stack.api}/deployments/{first['deployment_id']}/create_flow_run", json={}
                ).json()
                while (run := http.get(f"{stack.api}/flow_runs/{created['id']}").json())[
                    "state_type"
                ] not in FINAL:
                    time.sleep(0.2)
                if run["state_name"] != "Skipped":
                    raise RuntimeError(f"the rerun ended {run['state_name']}: "
                                       f"{run['state']['message']}")  # fmt: skip
                warms.append(ts(run["end_time"]) - ts(run["created"]))
                task_body = {"flow_runs": {"id": {"any_": [run["id"]]}}}
                for task in http.post(f"{stack.api}/task_runs/filter", json=task_body).json():
                    if task["start_time"] and task["end_time"]:
                        name = task["name"].rsplit("-", 1)[0]  # "resolve-features-3a1"
                        tasks.setdefault(name, []).append(
                            ts(task["end_time"]) - ts(task["start_time"])
                        )
                log = stack.root / ".driftloop" / "logs" / "prefect-worker.log"
                warm_started += f"Flow run {run['id']} starts in warm engine" in log.read_text()
                print(f"  warm rerun {i + 1}: {warms[-1]:.2f}s", flush=True)
    finally:
        stack.stop()
    return up_to_champion, cold, warms, tasks, warm_started


def plain_training(
    labels_path: Path,
    feature_repo: Path,
    tracking_uri: str,
    artifacts: Path,
    name: str,
    parallelism: int,
) -> float:
    """The same computation as the flow with pandas, scikit-learn and MLflow only."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from driftloop.core.contracts import FeatureColumn, ResolvedFeatures, TableSchema
    from driftloop.core.modeling import (
        SKOPS_TRUSTED_TYPES,
        build_pipeline,
        feature_matrix,
        score_probabilities,
    )
    from driftloop.core.params import SearchPolicy
    from driftloop.core.search import create_study, suggest_spec
    from driftloop.core.validation import check_training_frame
    from tasks.evaluate_trial import fit_and_score
    from tasks.log_to_mlflow import model_requirements

    started = time.perf_counter()
    labels = pd.read_parquet(labels_path).sort_values("event_timestamp")
    data = feature_repo.parent / ".driftloop" / "feast" / "data"
    frame = labels
    views = {"customer_profile": 365, "customer_activity": 30}
    columns: list[FeatureColumn] = []
    for view, ttl_days in views.items():
        features = pd.read_parquet(data / f"{view}.parquet").sort_values("event_timestamp")
        feature_names = [c for c in features.columns
                         if c not in ("customer_id", "event_timestamp", "created")]  # fmt: skip
        features = features.rename(columns={"event_timestamp": f"{view}_ts"})
        frame = pd.merge_asof(
            frame.sort_values("event_timestamp"), features.drop(columns="created"),
            left_on="event_timestamp", right_on=f"{view}_ts", by="customer_id",
            tolerance=pd.Timedelta(days=ttl_days),
        )  # fmt: skip
        for feature in feature_names:
            kind = "categorical" if features[feature].dtype == object else "numeric"
            columns.append(FeatureColumn(name=feature, ref=f"{view}:{feature}", feast_type="-",
                                         kind=kind))  # fmt: skip
    schema = TableSchema(entity_columns=("customer_id",), timestamp_column="event_timestamp",
                         label_column="churned")  # fmt: skip
    check_training_frame(frame, schema, columns, "plain")
    ordered = frame.sort_values(["event_timestamp", "customer_id"], kind="stable")
    cutoff = ordered["event_timestamp"].iloc[int(len(ordered) * 0.8)]
    train, holdout = (
        ordered[ordered.event_timestamp < cutoff],
        ordered[ordered.event_timestamp >= cutoff],
    )
    # The same search as the flow (same sampler, seed and batches), one trial after another.
    policy = SearchPolicy()
    study = create_study(policy)
    resolved = ResolvedFeatures(
        project="plain", feature_service=None, columns=tuple(columns), fingerprint="plain"
    )
    scored = []
    while len(scored) < policy.n_trials:
        batch = [study.ask() for _ in range(min(parallelism, policy.n_trials - len(scored)))]
        specs = [suggest_spec(trial, policy) for trial in batch]
        for trial, spec in zip(batch, specs, strict=True):
            metrics = fit_and_score(train, resolved, schema, spec, policy.validation_fraction, 0)
            study.tell(trial, metrics.roc_auc)
            scored.append((metrics.roc_auc, spec))
    best = max(scored, key=lambda pair: pair[0])[1]
    model = build_pipeline(best, columns, 0)
    model.fit(feature_matrix(train, columns), train["churned"])
    metrics = score_probabilities(
        holdout["churned"], model.predict_proba(feature_matrix(holdout, columns))[:, 1]
    )
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(name, artifact_location=str(artifacts / name))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metrics(metrics.as_dict())
        example = feature_matrix(train.head(5), columns)
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(example, model.predict_proba(example)),
            input_example=example, pip_requirements=model_requirements(),
            serialization_format="skops", skops_trusted_types=SKOPS_TRUSTED_TYPES,
            pyfunc_predict_fn="predict_proba",
        )  # fmt: skip
    version = mlflow.register_model(info.model_uri, name).version
    client.set_registered_model_alias(name, "champion", version)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="labeled rows in the dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reruns", type=int, default=5, help="warm reruns via the deployment")
    args = parser.parse_args()
    # In process first: `configure` must set Prefect's environment before anything imports
    # Prefect (the service stack below talks to its own server by URL, whatever it says).
    print("In process...", flush=True)
    root = configure("bench-training")
    state = root / ".driftloop"

    # Import everything heavy up front: the timings below compare run time, not imports.
    import feast  # noqa: F401
    import mlflow
    import mlflow.sklearn
    import sklearn.ensemble  # noqa: F401

    from blocks import DvcDataset, FeastFeatureStore, MlflowTracking, RayCluster
    from driftloop.app.bootstrap import register_block_types
    from driftloop.app.demo import DEMO_ENTITY, DEMO_FEATURE_SERVICE, DEMO_TABLE_PATH
    from driftloop.app.demo.setup import DemoConfig, prepare_demo
    from driftloop.core.params import FeatureSelection
    from driftloop.core.settings import get_settings
    from flows.training import train

    batches = 4
    try:
        with PrefectServer(root):
            register_block_types()
            settings = get_settings()
            print(f"Preparing the demo with {args.rows} labeled rows...", flush=True)
            with contextlib.redirect_stdout(io.StringIO()):
                prepare_demo(settings, DemoConfig(rows_per_batch=args.rows // batches,
                                                  initial_batches=batches))  # fmt: skip
            DvcDataset(
                name="churn", repo=str(settings.data_registry_dir), path=DEMO_TABLE_PATH,
                entity_columns=[DEMO_ENTITY], label_column="churned",
            ).save("bench")  # fmt: skip
            FeastFeatureStore(repo_path=str(settings.feature_repo_dir)).save("bench")
            RayCluster().save("default")  # the embedded default: a local Ray per flow run

            def flow_run(label: str) -> float:
                kwargs = {
                    "features": FeatureSelection(feature_service=DEMO_FEATURE_SERVICE),
                    "dataset_block": "bench", "feast_block": "bench", "mlflow_block": label,
                }  # fmt: skip
                started = time.perf_counter()
                state_ = train(**kwargs, return_state=True)
                elapsed = time.perf_counter() - started
                assert state_.is_completed(), state_.message
                return elapsed

            # One MLflow store, created before any timing (as a running MLflow server would
            # be); every repeat registers a new model, so each cold run is a first promotion.
            tracking_uri = f"sqlite:///{state / 'mlflow.db'}"
            mlflow.MlflowClient(tracking_uri).search_experiments()
            # One untimed repeat warms Python's own caches (first Prefect client, first Feast
            # registry read, first model save), which neither side should pay for.
            colds, warms, plains = [], [], []
            for i in range(args.repeats + 1):
                shutil.rmtree(state / "results", ignore_errors=True)
                MlflowTracking(
                    tracking_uri=tracking_uri,
                    artifact_location=str(state / "artifacts" / f"flow-{i}"),
                    experiment_name=f"flow-{i}",
                    registered_model_name=f"flow-model-{i}",
                ).save(f"mlflow-{i}")
                cold = flow_run(f"mlflow-{i}")
                warm = flow_run(f"mlflow-{i}")
                plain = plain_training(
                    settings.data_registry_dir / DEMO_TABLE_PATH,
                    settings.feature_repo_dir,
                    tracking_uri,
                    state / "artifacts",
                    f"plain-{i}",
                    parallelism=os.cpu_count() or 1,
                )
                if i == 0:
                    continue
                colds.append(cold)
                warms.append(warm)
                plains.append(plain)
                print(f"  repeat {i}: cold {cold:.2f}s, warm {warm:.2f}s, plain {plain:.2f}s",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cold, warm, plain = median(colds), median(warms), median(plains)
    print("Through the deployment (driftloop up, the demo's data)...", flush=True)
    up_s, cold_d, warms_d, tasks_d, warm_started = through_the_deployment(args.reruns)
    warm_d = median(warms_d)
    print()
    print(
        table(
            [
                ("through the deployment", "seconds", "ratio / target"),
                ("`make up` -> first champion (empty state folder)", f"{up_s:.1f}", ""),
                ("cold: the first training `make up` starts", f"{cold_d:.2f}", ""),
                (
                    f"warm: rerun from the deployment, unchanged data (median of {len(warms_d)})",
                    f"{warm_d:.2f}",
                    f"warm/cold = {warm_d / cold_d:.1%} (target <= 10%)",
                ),
                ("warm reruns started in a warm engine", f"{warm_started} of {len(warms_d)}", ""),
                *(
                    (f"  task {name} (median)", f"{median(values):.2f}", "")
                    for name, values in sorted(tasks_d.items(), key=lambda kv: -median(kv[1]))
                ),
            ],
            "Training through the running service (created -> final)",
        )
    )
    print()
    print(
        table(
            [
                ("measurement (median)", "seconds", "ratio / target"),
                ("cold flow run (nothing cached)", f"{cold:.2f}", ""),
                (
                    "warm flow run (same inputs)",
                    f"{warm:.2f}",
                    f"warm/cold = {warm / cold:.1%} (target <= 10%)",
                ),
                ("plain script, same computation", f"{plain:.2f}", ""),
                (
                    "flow vs plain",
                    f"{cold:.2f} vs {plain:.2f}",
                    f"flow/plain = {cold / plain:.2f}x (target <= 1.3x)",
                ),
            ],
            f"Training benchmark: {args.rows} rows, {args.repeats} repeats",
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
