"""Event storm and idle memory, embedded (SQLite) against server profile (PostgreSQL, Redis).

    make bench-storm        # or: .venv/bin/python bench/storm_bench.py --events 50

Runs `driftloop up` twice in temporary state folders (own ports): first the embedded profile,
then the server profile (`DRIFTLOOP_PROFILE=server`: `up` starts PostgreSQL and Redis). Each
time it waits for the demo's first training and the scoring run its promotion starts, then:

1. **Idle memory**: after the service has been idle for `--idle-s` seconds, the proportional
   set size (PSS: shared pages split between the processes that share them, so the sum is what
   the service costs the machine) of `driftloop up` and every process under it, by component.
2. **The storm**: `--events` `driftloop.model.promoted` events in one request, as a busy bus
   delivers them. Each starts a run of the scoring deployment through the automation
   `score-on-promotion`; the deployment runs one at a time and queues the rest, so the queue
   keeps asking the database for the slot while the automation writes new runs. Measured: the
   request's acceptance (events/s), emit -> flow run created for every run (p50/p95/max), runs
   created per second, and the Prefect server's health endpoint probed every 0.25 s during the
   storm (answered, p50/p95/max). Afterwards, the `database is locked` lines in the server log.

Server timestamps and the benchmark's clock are the same machine's clock. Targets (measured,
never asserted in tests): idle memory of the embedded service, MLflow included, <= 700 MB
(Airflow 3 standalone: 1.05 GB on this kind of machine); health answered within 1 s throughout
the storm on the server profile.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import Stack, api_client, table, ts

SCORING = "score-churn-batch"
MODEL = "churn-model"
PROFILES = ("embedded", "server")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _component_of(process, components: dict[int, str]) -> str:
    """The component a process belongs to: the name of its nearest ancestor that the
    supervisor started (its PID files), else the supervisor itself."""
    import psutil

    current = process
    while current is not None:
        if current.pid in components:
            return components[current.pid]
        try:
            current = current.parent()
        except psutil.Error:
            break
    return "driftloop up"


def service_pss(stack: Stack) -> dict[str, float]:
    """PSS in MB of `driftloop up` and every process under it (components, their children,
    flow-run engines, Ray workers, PostgreSQL's backends), summed by component."""
    import psutil

    run_dir = Path(stack.env["DRIFTLOOP_HOME"]) / "run"
    components = {int(path.read_text().split()[0]): path.stem for path in run_dir.glob("*.pid")}
    root = psutil.Process(stack.process.pid)
    by_component: dict[str, float] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            pss = process.memory_full_info().pss / 2**20
        except psutil.Error:
            continue
        name = _component_of(process, components)
        by_component[name] = by_component.get(name, 0.0) + pss
    return by_component


class HealthProbe(threading.Thread):
    """GET /health every 0.25 s until stopped: the seconds each probe took (inf: no answer
    within 10 s, or an error)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.seconds: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    ok = response.status == 200
            except Exception:
                ok = False
            self.seconds.append(time.monotonic() - started if ok else float("inf"))


def scoring_runs(http, api: str) -> list[dict]:
    body = {"deployments": {"name": {"any_": [SCORING]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return http.post(f"{api}/flow_runs/filter", json=body).json()


def storm(stack: Stack, events: int, wait_s: float) -> dict[str, object]:
    """Emit the burst; collect the runs it creates within `wait_s`."""
    from prefect.events import Event

    burst = [
        Event(
            event="driftloop.model.promoted",
            resource={"prefect.resource.id": f"driftloop.model.{MODEL}"},
            payload={"version": "1", "previous_version": None, "metrics": {}, "storm": i},
        ).model_dump(mode="json")
        for i in range(events)
    ]
    probe = HealthProbe(f"{stack.api}/health")
    with api_client() as http:
        known = {r["id"] for r in scoring_runs(http, stack.api)}
        probe.start()
        emitted = time.time()
        http.post(f"{stack.api}/events", json=burst).raise_for_status()
        accepted = time.time() - emitted
        deadline = time.monotonic() + wait_s
        created: list[float] = []
        while time.monotonic() < deadline:
            new = [r for r in scoring_runs(http, stack.api) if r["id"] not in known]
            created = sorted(ts(r["created"]) - emitted for r in new)
            if len(created) >= events:
                break
            time.sleep(1)
        time.sleep(5)  # the queue goes on asking for the slot: keep probing a little longer
        probe.done.set()
        probe.join()
    log = Path(stack.env["DRIFTLOOP_HOME"]) / "logs" / "prefect-server.log"
    return {
        "accepted": accepted,
        "created": created,
        "health": probe.seconds,
        "locked": log.read_text(errors="replace").count("database is locked"),
    }


def run_profile(profile: str, events: int, idle_s: float, wait_s: float) -> dict[str, object]:
    stack = Stack(profile=profile)
    try:
        print(f"Starting driftloop up ({profile} profile) in {stack.root} ...")
        stack.start()
        stack.wait_for("driftloop is up", 300)
        stack.wait_for("completed", 600)
        with api_client() as http:  # the first promotion's scoring run, then quiet
            deadline = time.monotonic() + 300
            while not any(r["state_type"] == "COMPLETED" for r in scoring_runs(http, stack.api)):
                if time.monotonic() > deadline:
                    raise RuntimeError("the first scoring run did not complete")
                time.sleep(2)
        print(f"  idle for {idle_s:.0f}s ...")
        time.sleep(idle_s)
        memory = service_pss(stack)
        print(f"  storm of {events} events ...")
        result = storm(stack, events, wait_s)
        result["memory"] = memory
        return result
    finally:
        stack.stop()


def _dist(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{percentile(values, 0.5):.2f} / {percentile(values, 0.95):.2f} / "
            f"{max(values):.2f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50, help="events in the burst")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle time before PSS")
    parser.add_argument("--wait-s", type=float, default=180.0, help="how long runs may take")
    args = parser.parse_args()
    results = {p: run_profile(p, args.events, args.idle_s, args.wait_s) for p in PROFILES}
    emb, srv = results["embedded"], results["server"]

    names = sorted(set(emb["memory"]) | set(srv["memory"]))  # type: ignore[arg-type]
    rows = [("process (PSS, MB)", "embedded (SQLite)", "server (PostgreSQL, Redis)")]
    for name in names:
        rows.append((name, f"{emb['memory'].get(name, 0):.0f}",  # type: ignore[union-attr]
                     f"{srv['memory'].get(name, 0):.0f}"))  # type: ignore[union-attr]  # fmt: skip
    totals = [sum(r["memory"].values()) for r in (emb, srv)]  # type: ignore[union-attr]
    rows.append(("whole service (target <= 700 MB embedded)", f"{totals[0]:.0f}",
                 f"{totals[1]:.0f}"))  # fmt: skip
    print()
    print(table(rows, f"Idle memory after {args.idle_s:.0f}s idle, on {os.cpu_count()} CPUs"))

    def storm_row(label: str, fmt) -> tuple[str, str, str]:
        return (label, fmt(emb), fmt(srv))

    rows = [
        ("storm measure", "embedded (SQLite)", "server (PostgreSQL, Redis)"),
        storm_row("burst accepted by POST /events (events/s)",
                  lambda r: f"{args.events / max(r['accepted'], 1e-9):.0f}"),
        storm_row("runs created", lambda r: f"{len(r['created'])} / {args.events}"),
        storm_row("emit -> created, p50 / p95 / max (s)", lambda r: _dist(r["created"])),
        storm_row("runs created per second (first emit -> last created)",
                  lambda r: f"{len(r['created']) / max(r['created'] or [1e-9]):.2f}"),
        storm_row("health probes answered",
                  lambda r: f"{sum(s != float('inf') for s in r['health'])} / "
                            f"{len(r['health'])}"),
        storm_row("health latency p50 / p95 / max (s; target max <= 1 s)",
                  lambda r: _dist([s for s in r["health"] if s != float("inf")])),
        storm_row('"database is locked" in the server log', lambda r: str(r["locked"])),
    ]  # fmt: skip
    print()
    print(table(rows, f"A storm of {args.events} driftloop.model.promoted events -> "
                      f"{SCORING} runs, same run, same machine"))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
