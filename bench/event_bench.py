"""Event latency benchmark: how fast an event becomes a running flow, through the running service.

    make bench-events       # or: .venv/bin/python bench/event_bench.py --events 20

Runs `driftloop up` twice in temporary state folders (own ports), first with Prefect's stock
process worker (`DRIFTLOOP_WORKER=stock`, polling every second), then with driftloop's worker
(woken by the pool's events, polling every 5 s as a fallback, and forking each run from its
warm engine). Each time it waits for the
demo's first training and the scoring run its promotion starts, then emits
`driftloop.model.promoted` N times (one at a time, each after the previous scoring run
finished, and `--gap-s` later) and measures each hop: emit -> flow run created (the
automation), created -> Pending (the worker picked it up), Pending -> Running (the engine
process started and loaded the flow), Running -> first task, and emit -> first task. Whether
driftloop's worker found each run by its event or by a poll, and started it in a warm engine
or a cold one, is read from its log. With driftloop's worker it then runs `driftloop add-batch
--drift` (what `make drift` runs) and measures the time until the MLflow `champion` alias
moves, and until the loop has settled (the new champion's first drift check reports
`driftloop.drift.checked`).

Server timestamps and the benchmark's clock are the same machine's clock.
Targets (measured, never asserted in tests): emit to first task, p50 <= 2 s; drifted batch to
new champion <= 60 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import Stack, api_client, table, ts
from driftloop.core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.events import EventPage
    from prefect.events.schemas.events import ReceivedEvent

SCORING = "score-churn-batch"
MODEL = "churn-model"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def scoring_runs(http, api: str) -> list[dict]:
    body = {"deployments": {"name": {"any_": [SCORING]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return http.post(f"{api}/flow_runs/filter", json=body).json()


def first_task_start(http, api: str, flow_run_id: str) -> float | None:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    starts = [ts(t["start_time"]) for t in http.post(f"{api}/task_runs/filter", json=body).json()]
    starts = [s for s in starts if s]
    return min(starts) if starts else None


def wait_final(http, api: str, known: set[str], timeout: float = 300) -> dict:
    """The next scoring run not in `known`, once it is final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in scoring_runs(http, api):
            if run["id"] not in known and run["state_type"] in ("COMPLETED", "FAILED", "CRASHED"):
                return run
        time.sleep(0.2)
    raise RuntimeError("no scoring run finished in time")


HOPS = (
    ("emit -> created", "created"),
    ("created -> Pending", "created->pending"),
    ("Pending -> Running", "pending->running"),
    ("Running -> first task", "running->task"),
    ("emit -> Running", "running"),
    ("emit -> first task", "first task"),
)


def state_times(http, api: str, flow_run_id: str) -> dict[str, float]:
    """When the run first entered each state type (server timestamps)."""
    states = http.get(f"{api}/flow_run_states/", params={"flow_run_id": flow_run_id}).json()
    first: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        first.setdefault(state["type"], ts(state["timestamp"]))
    return first


def worker_log_says(stack: Stack, line: str) -> bool:
    log = stack.root / ".driftloop" / "logs" / "prefect-worker.log"
    return log.exists() and line in log.read_text()


def picked_up_on_event(stack: Stack, flow_run_id: str) -> bool:
    """driftloop's worker logs the runs it polled for because of their event."""
    return worker_log_says(stack, f"Picked up flow run {flow_run_id} on its event")


def started_warm(stack: Stack, flow_run_id: str) -> bool:
    """driftloop's worker logs each run it forked from its warm engine."""
    return worker_log_says(stack, f"Flow run {flow_run_id} starts in warm engine")


def measure_events(stack: Stack, count: int, gap_s: float = 0.0) -> dict[str, list[float]]:
    from prefect.events import Event

    with api_client() as http:
        known = {r["id"] for r in scoring_runs(http, stack.api)}
        samples: dict[str, list[float]] = {key: [] for _, key in HOPS}
        samples["by event"] = []
        samples["warm"] = []
        for i in range(count):
            event = Event(
                event="driftloop.model.promoted",
                resource={"prefect.resource.id": f"driftloop.model.{MODEL}"},
                payload={"version": "1", "previous_version": None, "metrics": {}, "bench": i},
            ).model_dump(mode="json")
            emitted = time.time()
            http.post(f"{stack.api}/events", json=[event]).raise_for_status()
            run = wait_final(http, stack.api, known)
            known.add(run["id"])
            if run["state_type"] != "COMPLETED":
                raise RuntimeError(f"scoring run {run['name']} ended {run['state_name']}")
            created = ts(run["created"])
            states = state_times(http, stack.api, run["id"])
            running = ts(run["start_time"])
            task = first_task_start(http, stack.api, run["id"])
            samples["created"].append(created - emitted)
            samples["created->pending"].append(states["PENDING"] - created)
            samples["pending->running"].append(running - states["PENDING"])
            samples["running->task"].append(task - running)
            samples["running"].append(running - emitted)
            samples["first task"].append(task - emitted)
            samples["by event"].append(float(picked_up_on_event(stack, run["id"])))
            samples["warm"].append(float(started_warm(stack, run["id"])))
            print(f"  {stack.worker} worker, event {i + 1}/{count}: first task after "
                  f"{samples['first task'][-1]:.2f}s")  # fmt: skip
            time.sleep(gap_s)
    return samples


def prefect_client(api: str) -> SyncPrefectClient:
    """Prefect's client for the stack's server (not whatever PREFECT_API_URL names), as
    patient as `api_client`: its HTTP client is the same and retries a 503 too."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api, httpx_settings={"timeout": 120})


def drift_checks_of(client: SyncPrefectClient, version: str) -> list[dict]:
    """Drift events (detected or checked) about this champion version, oldest first, as the
    JSON the API serves. Every page: the first check of a version may be an old event."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=["driftloop.drift.checked", "driftloop.drift.detected"]),
        occurred=EventOccurredFilter(since=datetime(2000, 1, 1, tzinfo=UTC)),
    )
    page: EventPage | None = client.read_events(filter=event_filter, limit=50)
    mine: list[ReceivedEvent] = []
    while page is not None:
        mine += [e for e in page.events if e.payload.get("champion_version") == version]
        page = page.get_next_page_sync(client)  # read_events_page(next_page); None after the last
    return [e.model_dump(mode="json") for e in sorted(mine, key=lambda e: e.occurred)]


def measure_drift_to_settled(stack: Stack) -> dict[str, float]:
    """`make drift`, then: the new champion, and the first drift check of it (which the
    promotion starts): `drift.checked` means the loop has settled."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)
    before = client.get_model_version_by_alias(MODEL, "champion").version
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "driftloop.app.cli", "add-batch", "--drift"], env=stack.env,
        cwd=PROJECT_ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 900
    while client.get_model_version_by_alias(MODEL, "champion").version == before:
        if time.monotonic() > deadline:
            raise RuntimeError("the champion did not move within 15 minutes of the drifted batch")
        time.sleep(0.5)
    champion_at = time.time()
    version = client.get_model_version_by_alias(MODEL, "champion").version
    with prefect_client(stack.api) as client:
        while not (checks := drift_checks_of(client, version)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no drift check of v{version} within 15 minutes")
            time.sleep(0.5)
    first = checks[0]
    if first["event"] != "driftloop.drift.checked":
        raise RuntimeError(f"the first check of v{version} did not settle: {first['payload']}")
    settled_at = ts(first["occurred"])
    return {
        "champion": champion_at - started,
        "settled": settled_at - started,
        "promotion to settled": settled_at - champion_at,
    }


def run_stack(
    worker: str, events: int, loop: bool, gap_s: float = 0.0
) -> tuple[dict[str, list[float]], dict]:
    """Start `driftloop up` with this worker, measure `events` events (and, if `loop`, make
    drift -> champion -> settled), stop it."""
    stack = Stack(worker)
    try:
        print(f"Starting driftloop up ({worker} worker) in {stack.root} ...")
        stack.start()
        stack.wait_for("driftloop is up", 300)
        stack.wait_for("completed", 600)
        with api_client() as http:
            wait_final(http, stack.api, set())  # the scoring run of the first promotion
        samples = measure_events(stack, events, gap_s)
        settled: dict = {}
        if loop:
            print("Adding a drifted batch (make drift) ...")
            settled = measure_drift_to_settled(stack)
    finally:
        stack.stop()
    return samples, settled


def _stats(values: list[float]) -> str:
    return (f"{percentile(values, 0.5):.2f} / {percentile(values, 0.95):.2f} / "
            f"{max(values):.2f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20, help="events per worker (>= 20)")
    parser.add_argument("--no-loop", action="store_true", help="skip make drift -> settled")
    parser.add_argument(
        "--gap-s", type=float, default=0.0,
        help="pause after each scoring run before the next event (0: back to back)",
    )  # fmt: skip
    args = parser.parse_args()
    # The stock worker first, then driftloop's, each on a fresh stack, in the same run.
    stock, _ = run_stack("stock", args.events, loop=False, gap_s=args.gap_s)
    ours, loop = run_stack("driftloop", args.events, loop=not args.no_loop, gap_s=args.gap_s)

    rows = [("hop (p50 / p95 / max, s)", "stock process worker", "driftloop worker",
             "p50 ratio", "target")]  # fmt: skip
    for label, key in HOPS:
        ratio = percentile(ours[key], 0.5) / max(percentile(stock[key], 0.5), 1e-9)
        target = "p50 <= 2 s" if key == "first task" else ""
        rows.append((label, _stats(stock[key]), _stats(ours[key]), f"{ratio:.2f}x", target))
    rows.append(("picked up by an event / by a poll", f"0 / {len(stock['by event'])}",
                 f"{int(sum(ours['by event']))} / "
                 f"{len(ours['by event']) - int(sum(ours['by event']))}", "", ""))  # fmt: skip
    warm = int(sum(ours["warm"]))
    rows.append(("started by a warm / cold process", f"0 / {len(stock['created'])}",
                 f"{warm} / {len(ours['warm']) - warm}", "", ""))  # fmt: skip
    print()
    print(
        table(
            rows,
            f"Event latency, {args.events} events per worker, {args.gap_s:g} s apart after each "
            f"scoring run (driftloop.model.promoted -> score-batch), on {os.cpu_count()} CPUs",
        )
    )
    if loop:
        print()
        print(table([
            ("the loop, driftloop worker (1 run)", "s", "target"),
            ("make drift -> new champion", f"{loop['champion']:.1f}", "<= 60 s"),
            ("new champion -> loop settled (drift.checked)",
             f"{loop['promotion to settled']:.1f}", ""),
            ("make drift -> loop settled", f"{loop['settled']:.1f}", ""),
        ], "make drift through the running service"))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
