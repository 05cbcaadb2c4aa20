"""Online serving benchmark: latency, throughput and hot swaps, through the running service.

    make bench-serving      # or: .venv/bin/python bench/serving_bench.py --seconds 10

Runs `driftloop up` in a temporary state folder (own ports), waits for the demo's first
champion at the serving application's `GET /model` and for the flows its promotion started,
then measures over HTTP, with keep-alive connections (one `httpx.Client` per thread):

1. **driftloop's `POST /predict`**: by entity (`{"customer_id": [...]}`, features from the
   Feast online store) with 1 and 100 ids, and by features (`{"instances": [...]}`) with 1 and
   100 rows. Ids are the banner's example ids and the newest customers of the stack's Feast
   data; feature rows are those customers' online values. For each: p50/p99 latency of a
   sequential run (after a warm-up), and throughput (requests/s) with `--threads` client
   threads for `--seconds`.
2. **`mlflow models serve`** on the same model (`models:/churn-model@champion`, local
   environment, its default single worker), sent the identical by-features bodies at
   `/invocations`; the same figures (by entity is n/a: it has no feature store).
3. **Hot swap under load**: `--threads` threads send by-entity requests without pause while
   a second version of the model (same run, same artifacts) is registered and promoted the
   way a promotion does it (the `champion` alias moves, then `driftloop.model.promoted` is
   emitted; the automation runs the `swap-churn-serving` deployment, which asks the
   application to reload). Measured: emit -> first answer from the new version, and the
   failed requests (non-200 or no answer) over the whole window, which goes on `--after-s`
   after the switch. Then the same back to the first version.
4. **In process**, in the benchmark's own process on the same machine: the Feast online
   lookup alone and the MLflow pyfunc's `predict` alone, on 1 and 100 rows, also with one
   warning filter as the replica scores; the replica's whole scoring step (`ServedModel.score`,
   the champion loaded as a replica loads it) by the MLflow pyfunc and by its compiled ONNX
   form; beside them, the mean time inside the replica (the application's own latency
   histogram, read from `/metrics` around the sequential runs): where the serving time goes.

The client threads run in the benchmark's process on the same machine as the service, so
throughput is that of the whole machine (clients included). No timing is asserted anywhere.
Targets (from the serving issue): by-entity p50 <= 15 ms, Feast lookup included; throughput
>= that of `mlflow models serve`; 0 failed requests during a hot swap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import Stack, api_client, table, ts
from driftloop.app.ports import free_port
from driftloop.core.settings import TELEMETRY_OFF

MODEL = "churn-model"
ALIAS = "champion"
ENTITY = "customer_id"
EVENT = "driftloop.model.promoted"
SWAP_DEPLOYMENT = "swap-churn-serving"
HEADER_VERSION = "x-driftloop-model-version"
JSON = {"content-type": "application/json"}
TIMEOUT_S = 30.0

os.environ.update(TELEMETRY_OFF)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- the stack --------------------------------------------------------------------------------
def wait_champion(serving: str, timeout: float) -> dict[str, Any]:
    """`GET /model` once it names a champion (the application may not answer yet)."""
    import httpx

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            state = httpx.get(f"{serving}/model", timeout=10).json()
            if isinstance(state, dict) and state.get("champion"):
                return state
            last = state
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(2)
    raise RuntimeError(f"no champion at {serving}/model within {timeout:.0f}s: {last!r}")


def busy_runs(http, api: str) -> list[dict]:
    """Flow runs running, pending, or scheduled for now or earlier."""
    body = {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING", "SCHEDULED"]}}}}
    now = time.time()
    return [
        r for r in http.post(f"{api}/flow_runs/filter", json=body).json()
        if r["state_type"] != "SCHEDULED" or (ts(r["expected_start_time"]) or 0) <= now
    ]  # fmt: skip


def wait_quiet(api: str, timeout: float = 300) -> float:
    """Wait until no flow run is busy (the automations a promotion starts: scoring, a drift
    check, the swap); return the seconds waited."""
    started = time.monotonic()
    calm = 0
    with api_client() as http:
        while time.monotonic() - started < timeout:
            calm = calm + 1 if not busy_runs(http, api) else 0
            if calm >= 3:
                break
            time.sleep(1)
    return time.monotonic() - started


def banner_ids(lines: list[str]) -> list[int]:
    for line in lines:
        match = re.search(r"curl -s \S+/predict -d '(.+)'", line)
        if match:
            return [int(i) for i in json.loads(match.group(1)).get(ENTITY, [])]
    return []


def newest_ids(root: Path, count: int) -> list[int]:
    import pandas as pd

    path = root / ".driftloop" / "feast" / "data" / "customer_activity.parquet"
    ids = pd.read_parquet(path, columns=[ENTITY])[ENTITY].tolist()
    return [int(i) for i in list(dict.fromkeys(reversed(ids)))[:count]]


def as_input(value: Any) -> Any:
    """A feature value as a by-features request sends it: numbers (and booleans) as floats,
    so that MLflow's schema check takes them as the model's double columns."""
    if isinstance(value, bool | int | float):
        return float(value)
    return value


# --- HTTP measurements ------------------------------------------------------------------------
def sequential(url: str, bodies: list[bytes], count: int, warmup: int) -> dict[str, Any]:
    import httpx

    seconds: list[float] = []
    failed = 0
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for i in range(warmup + count):
            body = bodies[i % len(bodies)]
            started = time.perf_counter()
            try:
                ok = client.post(url, content=body, headers=JSON).status_code == 200
            except httpx.HTTPError:
                ok = False
            elapsed = time.perf_counter() - started
            if i >= warmup:
                seconds.append(elapsed)
                failed += not ok
    return {"p50": percentile(seconds, 0.5), "p99": percentile(seconds, 0.99), "failed": failed,
            "count": count}  # fmt: skip


def concurrent(url: str, bodies: list[bytes], threads: int, seconds: float) -> dict[str, Any]:
    """Requests/s with `threads` clients sending without pause for `seconds`."""
    import httpx

    ok = [0] * threads
    failed = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def send(index: int) -> None:
        with httpx.Client(timeout=TIMEOUT_S) as client:
            barrier.wait()
            deadline = time.monotonic() + seconds
            i = index * 7919
            while time.monotonic() < deadline:
                try:
                    response = client.post(url, content=bodies[i % len(bodies)], headers=JSON)
                    if response.status_code == 200:
                        ok[index] += 1
                    else:
                        failed[index] += 1
                except httpx.HTTPError:
                    failed[index] += 1
                i += 1

    workers = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.monotonic()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    return {"rps": sum(ok) / elapsed, "ok": sum(ok), "failed": sum(failed)}


def replica_seconds(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of driftloop's own latency histogram: time inside the replica (parse,
    online features, score), over every version and mode."""
    import httpx

    total = count = 0.0
    text = httpx.get(metrics_url, timeout=TIMEOUT_S).text
    for line in text.splitlines():
        if line.startswith("driftloop_serving_request_duration_seconds_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("driftloop_serving_request_duration_seconds_count{"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def measure(
    url: str, kinds: dict[str, list[bytes]], args, metrics_url: str | None = None
) -> dict[str, dict[str, Any]]:
    results = {}
    for kind, bodies in kinds.items():
        batched = kind.startswith("batched")
        count = args.batched_requests if batched else args.single_requests
        print(f"    {kind}: {count} sequential, then {args.threads} threads for "
              f"{args.seconds:.0f}s ...", flush=True)  # fmt: skip
        before = replica_seconds(metrics_url) if metrics_url else None
        results[kind] = sequential(url, bodies, count, args.warmup)
        if metrics_url and before:
            after = replica_seconds(metrics_url)
            served = after[1] - before[1]
            results[kind]["replica_mean"] = (after[0] - before[0]) / served if served else None
        results[kind].update(concurrent(url, bodies, args.threads, args.seconds))
    return results


# --- mlflow models serve ----------------------------------------------------------------------
class MlflowServer:
    """`mlflow models serve` on the stack's registry, in a session of its own."""

    def __init__(self, tracking_uri: str, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "mlflow-models-serve.log"
        self.argv = [
            str(Path(sys.executable).parent / "mlflow"), "models", "serve",
            "-m", f"models:/{MODEL}@{ALIAS}", "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRIFTLOOP_"))
        }
        # It starts `uvicorn` from the PATH: the project's, as under make.
        bin_dir = str(Path(sys.executable).parent)
        self.env.update({**TELEMETRY_OFF, "MLFLOW_TRACKING_URI": tracking_uri,
                         "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})  # fmt: skip
        self.env.pop("MLFLOW_REGISTRY_URI", None)
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> float:
        import httpx

        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/ping", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(1)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"mlflow models serve did not answer /ping:\n{tail}")

    def stop(self) -> None:
        """SIGTERM to its process group, then SIGKILL to whatever of it is left."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the uvicorn server under the CLI, if any
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        self.process = None


# --- hot swap ---------------------------------------------------------------------------------
class Load:
    """Threads sending by-entity requests without pause; each answer's time, success and
    version (the `x-driftloop-model-version` header)."""

    def __init__(self, url: str, bodies: list[bytes], threads: int):
        self.url = url
        self.bodies = bodies
        self.stopping = threading.Event()
        self.answers: list[tuple[float, bool, str | None, str]] = []
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._send, args=(n,)) for n in range(threads)]

    def _send(self, index: int) -> None:
        import httpx

        with httpx.Client(timeout=TIMEOUT_S) as client:
            i = index * 7919
            while not self.stopping.is_set():
                try:
                    response = client.post(
                        self.url, content=self.bodies[i % len(self.bodies)], headers=JSON
                    )
                    answer = (response.status_code == 200, response.headers.get(HEADER_VERSION),
                              str(response.status_code))  # fmt: skip
                except httpx.HTTPError as exc:
                    answer = (False, None, type(exc).__name__)
                with self.lock:
                    self.answers.append((time.time(), *answer))
                i += 1

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.join()

    def first(self, version: str, since: float) -> float | None:
        with self.lock:
            return next((t for t, _, v, _ in self.answers if t >= since and v == version), None)


def emit_promoted(api: str, version: str, previous: str) -> float:
    event = {
        "occurred": datetime.now(UTC).isoformat(),
        "event": EVENT,
        "resource": {"prefect.resource.id": f"driftloop.model.{MODEL}",
                     "prefect.resource.name": MODEL},
        "payload": {"version": version, "previous_version": previous, "bench": "serving"},
        "id": str(uuid.uuid4()),
    }  # fmt: skip
    with api_client() as http:
        emitted = time.time()
        http.post(f"{api}/events", json=[event]).raise_for_status()
    return emitted


def swap_run(api: str, since: float, timeout: float = 180) -> dict[str, Any] | None:
    """The `swap-churn-serving` run created after `since`, once final (or as it is then)."""
    body = {"deployments": {"name": {"any_": [SWAP_DEPLOYMENT]}}, "sort": "START_TIME_DESC"}
    deadline = time.monotonic() + timeout
    run = None
    with api_client() as http:
        while time.monotonic() < deadline:
            runs = [r for r in http.post(f"{api}/flow_runs/filter", json=body).json()
                    if (ts(r["created"]) or 0) >= since - 1]  # fmt: skip
            run = min(runs, key=lambda r: r["created"]) if runs else None
            if run and run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
    return run


def register_copy(stack: Stack) -> str:
    """A second version of the champion: same run, same logged model (MLflow 3 registers a
    logged model's `models:/m-...` source only with its model id, which the registry's REST
    answer leaves out)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)
    first = client.get_model_version_by_alias(MODEL, ALIAS)
    model_id = getattr(first, "model_id", None)  # not in the REST answer: read the source
    if not model_id and first.source.startswith("models:/m-"):
        model_id = first.source.removeprefix("models:/")
    second = client.create_model_version(
        MODEL, first.source, run_id=first.run_id, model_id=model_id
    )
    return str(second.version)


def hot_swap(stack: Stack, url: str, bodies: list[bytes], to: str, back_from: str, args):
    """Move the alias to `to` and announce it, under load; the window's answers."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)
    load = Load(url, bodies, args.threads)
    load.start()
    time.sleep(2)
    window_start = time.time() - 2
    client.set_registered_model_alias(MODEL, ALIAS, to)
    emitted = emit_promoted(stack.api, to, back_from)
    deadline = time.monotonic() + args.swap_timeout
    switched = None
    while switched is None and time.monotonic() < deadline:
        time.sleep(0.2)
        switched = load.first(to, emitted)
    time.sleep(args.after_s)
    load.stop()
    answers = load.answers
    run = swap_run(stack.api, emitted)
    after = [a for a in answers if switched is not None and a[0] > switched]
    failures: dict[str, int] = {}
    for _, ok, _, kind in answers:
        if not ok:
            failures[kind] = failures.get(kind, 0) + 1
    return {
        "to": to, "from": back_from,
        "switch_s": switched - emitted if switched is not None else None,
        "sent": len(answers), "failed": sum(failures.values()), "failures": failures,
        "old_after": sum(1 for a in after if a[1] and a[2] == back_from),
        "window_s": (answers[-1][0] - window_start) if answers else 0.0,
        "run_state": run["state_name"] if run else "no run",
        "run_created_s": ts(run["created"]) - emitted if run else None,
        "run_end_s": ts(run["end_time"]) - emitted if run and run.get("end_time") else None,
    }  # fmt: skip


# --- in process -------------------------------------------------------------------------------
def timed(fn, repeat: int) -> float:
    fn()
    values = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        values.append(time.perf_counter() - started)
    return statistics.median(values)


def in_process(store, refs, ids, served, frames, repeat: int) -> dict[str, float]:
    """`served`: the champion as a replica loads it (`load_alias`), compiled if it can be;
    `served.pyfunc` is its MLflow pyfunc."""
    import dataclasses

    from driftloop.app.serving.model import one_warning_filter

    pyfunc = served.pyfunc

    def one_filter(frame):
        with one_warning_filter():
            return pyfunc.predict(frame)

    uncompiled = dataclasses.replace(served, compiled=None)
    scorers = {}
    if served.compiled is not None:
        scorers = {
            "score onnx 1": timed(lambda: served.score(frames[0]), repeat),
            "score onnx 100": timed(lambda: served.score(frames[1]), repeat),
        }

    return {
        "feast 1": timed(lambda: store.get_online_features(
            features=refs, entity_rows=[{ENTITY: ids[0]}]).to_dict(), repeat),
        "feast 100": timed(lambda: store.get_online_features(
            features=refs, entity_rows=[{ENTITY: i} for i in ids[:100]]).to_dict(), repeat),
        "predict 1": timed(lambda: pyfunc.predict(frames[0]), repeat),
        "predict 100": timed(lambda: pyfunc.predict(frames[1]), repeat),
        # As the replica scores (driftloop.app.serving.model: why).
        "predict one filter 1": timed(lambda: one_filter(frames[0]), repeat),
        "predict one filter 100": timed(lambda: one_filter(frames[1]), repeat),
        # The replica's whole scoring step (feature_matrix included), both ways.
        "score pyfunc 1": timed(lambda: uncompiled.score(frames[0]), repeat),
        "score pyfunc 100": timed(lambda: uncompiled.score(frames[1]), repeat),
        **scorers,
    }  # fmt: skip


def load_served(stack: Stack) -> Any:
    """The champion loaded as a replica loads it, in this process (the stack's MLflow and
    Feast repo, blocks built here instead of read from the stack's Prefect server)."""
    from blocks.feast import FeastFeatureStore
    from blocks.mlflow import MlflowTracking
    from driftloop.app.serving.model import load_alias

    tracking = MlflowTracking(tracking_uri=stack.mlflow, registered_model_name=MODEL)
    feast = FeastFeatureStore(repo_path=str(stack.root / "feature_repo"))
    served = load_alias(tracking, feast, feast.store(), ALIAS)
    if served is None:
        raise RuntimeError(f"{MODEL} has no {ALIAS!r} alias")
    return served


# --- the run ----------------------------------------------------------------------------------
def prepare(stack: Stack, state: dict[str, Any], args) -> dict[str, Any]:
    """Ids, feature rows and request bodies from the stack's own data."""
    from feast import FeatureStore

    refs = state["champion"]["features"]
    names = [ref.split(":", 1)[1] for ref in refs]
    example = banner_ids(stack.lines)
    candidates = list(dict.fromkeys(example + newest_ids(stack.root, args.ids)))
    store = FeatureStore(repo_path=str(stack.root / "feature_repo"))
    values = store.get_online_features(
        features=refs, entity_rows=[{ENTITY: i} for i in candidates]
    ).to_dict()
    known, rows, partial = [], [], 0
    for index, entity in enumerate(candidates):
        row = {name: values[name][index] for name in names}
        if all(v is None for v in row.values()):
            continue  # not in the online store: a 404
        known.append(entity)
        if any(v is None for v in row.values()):
            partial += 1
            continue
        rows.append({name: as_input(v) for name, v in row.items()})
    if len(known) < 100 or len(rows) < 100:
        raise RuntimeError(f"too few online entities: {len(known)} known, {len(rows)} complete")
    rng = random.Random(0)

    def bodies(items: list, size: int, key: str, count: int = 200) -> list[bytes]:
        out = []
        for _ in range(count):
            start = rng.randrange(len(items))
            chunk = (items[start:] + items[:start])[:size]
            out.append(json.dumps({key: chunk}).encode())
        return out

    return {
        "store": store, "refs": refs, "names": names, "example": example, "ids": known,
        "rows": rows, "partial": partial, "candidates": len(candidates),
        "entity": {"single by-entity (1 id)": bodies(known, 1, ENTITY),
                   "batched by-entity (100 ids)": bodies(known, 100, ENTITY)},
        "features": {"single by-features (1 row)": bodies(rows, 1, "instances"),
                     "batched by-features (100 rows)": bodies(rows, 100, "instances")},
    }  # fmt: skip


def check_answers(url: str, data: dict[str, Any], mlflow: bool = False) -> None:
    """One request of each kind answers 200 with one prediction per row (a sanity check)."""
    import httpx

    kinds = data["features"] if mlflow else {**data["entity"], **data["features"]}
    for kind, bodies in kinds.items():
        response = httpx.post(url, content=bodies[0], headers=JSON, timeout=TIMEOUT_S)
        if response.status_code != 200:
            raise RuntimeError(f"{kind} -> {response.status_code}: {response.text[:500]}")
        size = 100 if kind.startswith("batched") else 1
        if len(response.json()["predictions"]) != size:
            raise RuntimeError(f"{kind}: {response.text[:500]}")


def mlflow_takes_nulls(url: str, row: dict[str, Any]) -> str:
    """Whether `mlflow models serve` takes a row with a missing numeric / categorical value
    (driftloop's by-features requests may send null: the model imputes it)."""
    import httpx

    out = []
    for kind, test in (("numeric", lambda v: isinstance(v, float)),
                       ("categorical", lambda v: isinstance(v, str))):  # fmt: skip
        name = next((n for n, v in row.items() if test(v)), None)
        if name is None:
            continue
        body = json.dumps({"instances": [{**row, name: None}]}).encode()
        status = httpx.post(url, content=body, headers=JSON, timeout=TIMEOUT_S).status_code
        out.append(f"{kind} null -> {status}")
    return ", ".join(out)


def start_stack(attempts: int = 3) -> Stack:
    """`driftloop up`, again on other ports if one of those picked was taken meanwhile."""
    for attempt in range(1, attempts + 1):
        stack = Stack()
        print(f"Starting driftloop up in {stack.root} ...", flush=True)
        try:
            stack.start()
            stack.wait_for("driftloop is up", 400)
            return stack
        except RuntimeError:
            stack.stop()
            if attempt == attempts or not any("already in use" in x for x in stack.lines):
                raise
            print("  a port was taken meanwhile; again on other ports", flush=True)
    raise AssertionError("unreachable")


def run(args) -> dict[str, Any]:
    import mlflow
    import pandas as pd

    begun = time.monotonic()
    stack = start_stack()
    serving = f"http://127.0.0.1:{stack.env['DRIFTLOOP_SERVING_PORT']}"
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-mlflow-serve-"))
    server = MlflowServer(stack.mlflow, workdir)
    out: dict[str, Any] = {}
    try:
        state = wait_champion(serving, args.champion_timeout)
        v1 = state["champion"]["version"]
        print(f"  champion v{v1} served after {time.monotonic() - begun:.0f}s; waiting for "
              "the flows its promotion started ...", flush=True)  # fmt: skip
        print(f"  quiet after {wait_quiet(stack.api):.0f}s", flush=True)
        data = prepare(stack, state, args)
        out["data"] = {k: data[k] for k in ("example", "partial", "candidates")}
        out["data"].update(ids=len(data["ids"]), rows=len(data["rows"]), names=data["names"])

        print("  in process: Feast lookup, pyfunc predict ...", flush=True)
        mlflow.set_tracking_uri(stack.mlflow)
        mlflow.set_registry_uri(stack.mlflow)
        frames = [pd.DataFrame(data["rows"][:1], columns=data["names"]),
                  pd.DataFrame(data["rows"][:100], columns=data["names"])]  # fmt: skip
        served = load_served(stack)
        out["scorer"] = {
            "scorer": served.scorer,
            "note": served.scorer_note,
            "parity": served.compiled.describe() if served.compiled else None,
        }
        out["inproc"] = in_process(data["store"], data["refs"], data["ids"], served,
                                   frames, args.repeat)  # fmt: skip

        print("  driftloop POST /predict ...", flush=True)
        check_answers(f"{serving}/predict", data)
        out["driftloop"] = measure(f"{serving}/predict", {**data["entity"], **data["features"]},
                                   args, f"{serving}/metrics")  # fmt: skip

        print("  mlflow models serve ...", flush=True)
        out["mlflow_start_s"] = server.start()
        invocations = f"{server.url}/invocations"
        check_answers(invocations, data, mlflow=True)
        out["mlflow_nulls"] = mlflow_takes_nulls(invocations, data["rows"][0])
        out["mlflow"] = measure(invocations, data["features"], args)
        server.stop()

        out["swaps"] = []
        try:
            v2 = register_copy(stack)
            for to, back_from in ((v2, v1), (v1, v2)):
                print(f"  quiet after {wait_quiet(stack.api):.0f}s; hot swap v{back_from} -> "
                      f"v{to} under load ...", flush=True)  # fmt: skip
                out["swaps"].append(hot_swap(stack, f"{serving}/predict", data["entity"][
                    "single by-entity (1 id)"], to, back_from, args))  # fmt: skip
        except Exception as exc:  # still print what was measured
            out["swap_error"] = f"{type(exc).__name__}: {exc}"
        return out
    finally:
        server.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _swap_run(swap: dict[str, Any]) -> str:
    created, end = swap["run_created_s"], swap["run_end_s"]
    return (f"{'-' if created is None else f'{created:.2f}'} / "
            f"{'-' if end is None else f'{end:.2f}'} ({swap['run_state']})")  # fmt: skip


def report(out: dict[str, Any], args) -> None:
    dl, ml = out["driftloop"], out["mlflow"]
    rows = [("measurement", "driftloop", "mlflow models serve", "ratio driftloop/mlflow",
             "target")]  # fmt: skip
    for kind, result in dl.items():
        other = ml.get(kind)
        for label, key in (("p50 (ms)", "p50"), ("p99 (ms)", "p99")):
            target = "-"
            if kind.startswith("single by-entity") and key == "p50":
                target = f"<= 15 ms ({'met' if result['p50'] <= 0.015 else 'missed'})"
            rows.append((f"{kind}: {label}", _ms(result[key]),
                         _ms(other[key]) if other else "n/a (no feature store)",
                         _ratio(result[key], other[key]) if other else "-", target))  # fmt: skip
        target = "-"
        if other:
            target = f">= mlflow ({'met' if result['rps'] >= other['rps'] else 'missed'})"
        rows.append((f"{kind}: throughput, {args.threads} threads (req/s)",
                     f"{result['rps']:.1f}", f"{other['rps']:.1f}" if other else "n/a",
                     _ratio(result["rps"], other["rps"]) if other else "-", target))  # fmt: skip
    failed_dl = sum(r["failed"] for r in dl.values())
    failed_ml = sum(r["failed"] for r in ml.values())
    rows.append(("failed requests in these runs", str(failed_dl), str(failed_ml), "-", "0"))
    print()
    print(table(rows, f"Serving through HTTP, keep-alive; sequential: {args.single_requests} "
                      f"single / {args.batched_requests} batched requests after {args.warmup} "
                      f"warm-up; throughput: {args.seconds:.0f}s; {os.cpu_count()} CPUs, "
                      "clients on the same machine"))  # fmt: skip

    ip = out["inproc"]
    rows = [
        ("step (in the benchmark's process)", "1 id / row (ms)", "100 ids / rows (ms)"),
        ("Feast get_online_features, median", _ms(ip["feast 1"]), _ms(ip["feast 100"])),
        ("MLflow pyfunc predict, median", _ms(ip["predict 1"]), _ms(ip["predict 100"])),
        ("... with one warning filter (as the replica), median",
         _ms(ip["predict one filter 1"]), _ms(ip["predict one filter 100"])),
        ("replica's scoring step, MLflow pyfunc with one filter",
         _ms(ip["score pyfunc 1"]), _ms(ip["score pyfunc 100"])),
        (f"replica's scoring step, compiled (ONNX) [served: {out['scorer']['scorer']}]",
         _ms(ip.get("score onnx 1")), _ms(ip.get("score onnx 100"))),
        ("driftloop, inside the replica, by entity: mean",
         _ms(dl["single by-entity (1 id)"].get("replica_mean")),
         _ms(dl["batched by-entity (100 ids)"].get("replica_mean"))),
        ("driftloop HTTP by entity, p50",
         _ms(dl["single by-entity (1 id)"]["p50"]), _ms(dl["batched by-entity (100 ids)"]["p50"])),
        ("driftloop HTTP by features, p50",
         _ms(dl["single by-features (1 row)"]["p50"]),
         _ms(dl["batched by-features (100 rows)"]["p50"])),
        ("mlflow models serve HTTP, p50",
         _ms(ml["single by-features (1 row)"]["p50"]),
         _ms(ml["batched by-features (100 rows)"]["p50"])),
    ]  # fmt: skip
    print()
    print(table(rows, f"Where the time goes: in-process medians of {args.repeat}, same run"))
    scorer = out["scorer"]
    print(
        f"  served by: {scorer['scorer']}"
        + (f" (parity: {scorer['parity']})" if scorer["parity"] else f" ({scorer['note']})")
    )

    d = out["data"]
    print()
    print(
        f"Data: {d['candidates']} newest ids (banner's {d['example']}); {d['ids']} in the "
        f"online store, {d['rows']} with every feature ({d['partial']} with some missing: left "
        f"out of the by-features bodies). Features: {', '.join(d['names'])}."
    )
    print(
        f"mlflow models serve: --env-manager local, 1 worker, /ping after "
        f"{out['mlflow_start_s']:.1f}s; the same {{'instances': [...]}} bodies as driftloop; "
        f"a row with a null: {out['mlflow_nulls'] or 'not tried'}."
    )

    if out.get("swap_error"):
        print(f"\nHot swap failed: {out['swap_error']}")
    if not out["swaps"]:
        return
    rows = [("hot swap under load", *(f"v{s['from']} -> v{s['to']}" for s in out["swaps"]),
             "target")]  # fmt: skip

    def swap_row(label: str, fmt, target: str = "-") -> tuple[str, ...]:
        return (label, *(fmt(s) for s in out["swaps"]), target)

    rows += [
        swap_row("emit -> first answer from the new version (s)",
                 lambda s: "never" if s["switch_s"] is None else f"{s['switch_s']:.2f}"),
        swap_row(f"{SWAP_DEPLOYMENT} run: emit -> created / finished (s)", _swap_run),
        swap_row("window (s)", lambda s: f"{s['window_s']:.1f}"),
        swap_row("requests sent", lambda s: str(s["sent"])),
        swap_row("old version answers after the first new one", lambda s: str(s["old_after"])),
        swap_row("failed requests", lambda s: str(s["failed"]) + (
            f" {s['failures']}" if s["failures"] else ""),
            f"0 ({'met' if all(s['failed'] == 0 for s in out['swaps']) else 'missed'})"),
    ]  # fmt: skip
    print()
    print(table(rows, f"Hot swap: {args.threads} threads of by-entity requests (1 id); alias "
                      f"moved, then {EVENT} emitted; load kept {args.after_s:.0f}s after the "
                      "switch"))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--single-requests", type=int, default=300)
    parser.add_argument("--batched-requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput run")
    parser.add_argument("--ids", type=int, default=2000, help="newest customer ids to use")
    parser.add_argument("--repeat", type=int, default=50, help="in-process repetitions")
    parser.add_argument("--after-s", type=float, default=10.0, help="load after a switch")
    parser.add_argument("--swap-timeout", type=float, default=300.0)
    parser.add_argument("--champion-timeout", type=float, default=900.0)
    args = parser.parse_args()
    started = time.monotonic()
    out = run(args)
    report(out, args)
    print(f"\nWall time: {time.monotonic() - started:.0f}s")
    return 1 if out.get("swap_error") else 0


if __name__ == "__main__":
    raise SystemExit(main())
