"""What the stack tests do to a running `driftloop up`, written once and run on each profile:
tests/test_stack.py (embedded: SQLite) and tests/test_stack_server.py (PostgreSQL, Redis)."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deployments.notifications import NOTICES
from driftloop.core import names
from tests.stack import (
    FINAL,
    SCORING,
    SWAP,
    TRAINING,
    ServingProbe,
    Stack,
    by_automation,
    processes_of,
    reason_of,
)


def wait_for_trials(stack: Stack, run_id: str, done: int, timeout: float = 300) -> None:
    """Until `done` trials of the run completed (so an interruption loses real work)."""
    deadline = time.monotonic() + timeout
    while True:
        states = stack.task_states(run_id).get("evaluate-trial", [])
        if states.count("Completed") >= done:
            return
        assert time.monotonic() < deadline, states
        time.sleep(1)


def kill_component(stack: Stack, name: str) -> None:
    """`kill -9` of the component's main process (as the OOM killer would); wait until the
    supervisor has restarted it."""
    start = len(stack.up.lines)
    os.kill(stack.component_pid(name), signal.SIGKILL)
    stack.up.wait_for(f"{name} exited unexpectedly (code -9)", timeout=30, after=start)
    stack.up.wait_for(f"Restarting {name} (restart 1;", timeout=60, after=start)
    stack.up.wait_for(f"{name} is healthy again", timeout=180, after=start)


def new_data_closes_the_loop_while_components_die(stack: Stack, dying: tuple[str, ...]) -> None:
    """After the first training of `make up`: a drifted batch is pushed; automations train and
    promote a new champion, and the promotion starts batch scoring. During that training the
    `dying` components are killed, one after the other: each is restarted, and the training
    rides through on its retries."""
    up, home = stack.up, stack.home
    assert any(stack.prefect_url in line for line in up.lines)
    assert any(stack.mlflow_url in line for line in up.lines)

    # 1. The first training: run from the deployment by the worker.
    trainings = stack.flow_runs(TRAINING)
    assert len(trainings) == 1, [(r["name"], r["state_name"], r["parameters"]) for r in trainings]
    (first,) = trainings
    assert first["state_type"] == "COMPLETED"
    assert first["deployment_id"]
    blocks = stack.api("POST", "/block_documents/filter", json={})
    assert {b["block_type"]["slug"] for b in blocks} >= {
        "driftloop-mlflow", "driftloop-feast", "driftloop-dvc-dataset", "driftloop-ray",
        "driftloop-drift-policy",
    }  # fmt: skip
    automations = {a["name"] for a in stack.api("POST", "/automations/filter", json={})}
    assert automations >= {
        "train-on-new-data", "retrain-on-drift", "score-on-promotion", "check-after-promotion",
        names.ZOMBIE_AUTOMATION, *(n.automation_name for n in NOTICES),
    }  # fmt: skip

    # MLflow shows the champion with its lineage.
    client = stack.mlflow()
    champion = client.get_model_version_by_alias("churn-model", "champion")
    assert champion.version == "1"
    assert champion.tags["driftloop.dvc.md5"]
    assert champion.tags["driftloop.prefect.flow_run_id"] == first["id"]
    assert champion.tags["driftloop.feast.feature_service"] == "churn_model_v1"
    assert champion.tags[names.TAG_DECISION] == names.DECISION_PROMOTED

    # The promotion event started batch scoring through its automation.
    scoring = stack.wait_for_run(SCORING, by_automation, timeout=240)
    assert scoring["state_type"] == "COMPLETED", scoring["state"]
    assert list((home / "predictions" / "churn-model" / "v1").glob("*.parquet"))

    # The champion is served: the first request `up` printed gets its predictions.
    (curl,) = [line for line in up.lines if "curl -s" in line]
    body = curl.split(" -d ", 1)[1].strip().strip("'")
    with ServingProbe(stack.serving_url, body) as probe:
        probe.wait_for_version("1", timeout=240)
        _closes_the_loop(stack, dying, scoring, probe)
    # Served throughout, by v1 and then v2, with not one failed request: while components
    # died, during the training, and during the swap. The one exception is the online store
    # itself: while a killed Redis restarts, by-entity requests get 503 ("the online store did
    # not answer"), and nothing else; it keeps what was materialized (its append-only log).
    failed = probe.failed()
    if "redis" in dying:
        assert all(a in ((503, "1"), (503, "2")) for a in failed), failed[:5]
        assert len(failed) <= 5 * 30, f"{len(failed)} requests failed: more than 30 s of outage"
    else:
        assert not failed, failed[:5]
    assert probe.answers[-1][0] == 200, probe.answers[-5:]
    assert [v for _, v in probe.answers][-1] == "2"
    assert {v for _, v in probe.answers} == {"1", "2"}
    swap = stack.wait_for_run(SWAP, by_automation, timeout=120)
    assert swap["state_type"] == "COMPLETED", swap["state"]
    # What was served is in the prediction log, as the drift monitor reads it back: on the
    # server profile a PostgreSQL table, on the embedded one parquet files. Both versions'
    # answers are there, with the features they were given (written within `log_flush_s`).
    log, now = stack.prediction_log(), datetime.now(UTC)
    deadline = time.monotonic() + 30
    while True:
        served = log.read("churn-model", now - timedelta(hours=1), datetime.now(UTC))
        if served is not None and set(served["version"]) == {"1", "2"}:
            break
        assert time.monotonic() < deadline, log.where("churn-model")
        time.sleep(1)
    assert {"customer_id", "plan", "score"} <= set(served.columns)
    assert set(served["role"]) == {"champion"}


def _closes_the_loop(stack: Stack, dying: tuple[str, ...], scoring: dict, probe) -> None:
    """New data, a training while `dying` components are killed, a promotion; the serving
    application swaps to the new champion."""
    home, client = stack.home, stack.mlflow()

    # 2. A drifted batch is pushed, as `make drift` does; its post-push hook emits the event.
    commit = stack.add_batch("--drift")

    # 3. The automation starts a training on exactly that revision; components die under it.
    def for_commit(run: dict) -> bool:
        return by_automation(run) and run["parameters"].get("rev") == commit

    deadline = time.monotonic() + 120
    while not [r for r in stack.flow_runs(TRAINING) if for_commit(r)]:
        assert time.monotonic() < deadline, "the automation started no training"
        time.sleep(1)
    (retrain,) = [r for r in stack.flow_runs(TRAINING) if for_commit(r)]
    stack.wait_until_state(retrain["id"], ("RUNNING",), timeout=180)
    wait_for_trials(stack, retrain["id"], 1)
    for name in dying:
        kill_component(stack, name)
    assert "Last lines of" in "\n".join(stack.up.lines)  # each exit quotes the component's log

    retrain = stack.wait_until_state(retrain["id"], FINAL, timeout=600)
    assert retrain["state_type"] == "COMPLETED", retrain["state"]
    assert reason_of(retrain) == "driftloop.dataset.updated"
    assert f"trained on data/churn_labels.parquet@{commit[:8]}" in retrain["state"]["message"]
    champion = client.get_model_version_by_alias("churn-model", "champion")
    assert champion.version == "2", champion.tags
    assert champion.tags["driftloop.prefect.flow_run_id"] == retrain["id"]
    assert champion.tags["driftloop.trigger.reason"] == "driftloop.dataset.updated"
    assert champion.tags["driftloop.dvc.commit"] == commit

    # ... and its promotion starts scoring with version 2, and swaps the served model.
    stack.wait_for_run(SCORING, lambda r: by_automation(r) and r["id"] != scoring["id"], 240)
    assert list((home / "predictions" / "churn-model" / "v2").glob("*.parquet"))
    probe.wait_for_version("2", timeout=120)
    assert stack.up.process.poll() is None  # the service stayed up throughout


def accounted_for(commit: str, messages: dict[str, str], trained: set[str]) -> list[str]:
    """How a revision ends up trained: [commit] if a version was trained on it, else the
    chain of revisions that superseded it, ending in a trained one. Fails if it does not.

    A run's final message says what it trained (`... parquet@<commit> ...`), or which newer
    revision superseded its own (`... superseded by the newer revision <commit> ...`)."""
    short = commit[:8]
    if short in trained:
        return [short]
    message = messages[short]
    newer = re.search(r"superseded by the newer revision ([0-9a-f]{8})", message)
    assert newer, f"revision {short} was neither trained nor superseded: {message}"
    if newer.group(1) in trained:
        return [short, newer.group(1)]
    return [short, *accounted_for(newer.group(1), messages, trained)]


def storm_then_ctrl_c_then_up_loses_no_revision(stack: Stack) -> float:
    """50 drift alerts at once and 5 revisions back to back; Ctrl-C while a training works
    through them; `make up` again and one more revision. The burst starts at most one
    training; the interrupted training is recorded as Crashed ("service stopped") and
    resumed; every revision's run trained or says which trained revision superseded it; the
    newest is trained; no run is cancelled, no model version duplicated, no slot wedged.
    Returns when (time.monotonic()) the Ctrl-C was sent."""
    from prefect.events import Event

    before = {r["id"] for r in stack.flow_runs(TRAINING)}

    def storm_runs() -> list[dict]:
        return [r for r in stack.flow_runs(TRAINING) if r["id"] not in before]

    alerts = [
        Event(
            event=names.EVENT_DRIFT_DETECTED,
            resource={"prefect.resource.id": "driftloop.model.churn-model"},
            payload={"drift_share": 0.5, "drifted_columns": ["plan", f"storm-{i}"],
                     "champion_version": "2", "window_start": "", "window_end": ""},
        ).model_dump(mode="json")
        for i in range(50)
    ]  # fmt: skip
    # 50 separate events (each its own id), delivered together as a busy event bus would.
    stack.api("POST", "/events", json=alerts)
    stack.add_batch("--rows", "600", "--seed", "100", "--count", "5")
    revisions = stack.commits(5)

    # Ctrl-C while a training of the storm is under way, with some of its work done.
    deadline = time.monotonic() + 300
    while True:
        running = [r for r in storm_runs() if r["state_type"] == "RUNNING"]
        trials = [stack.task_states(r["id"]).get("evaluate-trial", []) for r in running]
        if any(t.count("Completed") >= 2 for t in trials):
            break
        assert time.monotonic() < deadline, [(r["name"], r["state_name"]) for r in storm_runs()]
        time.sleep(1)
    interrupted = running[next(i for i, t in enumerate(trials) if t.count("Completed") >= 2)]
    ctrl_c_at = time.monotonic()
    assert stack.up.stop(signal.SIGINT) == 0
    assert any("flow run(s) in flight as Crashed" in line for line in stack.up.lines)
    assert "Stopped." in stack.up.lines[-1]
    assert processes_of(stack.home) == []
    assert list(Path(stack.env["HOME"]).iterdir()) == []  # nothing written to the home folder

    # `make up` again: the interrupted training is resumed (the same run, its work cached).
    up = stack.restart()
    assert any(f"resumed flow run {interrupted['name']!r}" in line for line in up.lines)
    assert not any("prepared demo" in line for line in up.lines)  # the state is reused
    states = stack.api("GET", f"/flow_run_states/?flow_run_id={interrupted['id']}")
    assert any(
        s["type"] == "CRASHED" and s["message"].startswith(names.CRASH_SERVICE_STOPPED)
        for s in states
    ), states
    # More new data arrives; it is trained: by a run of its own, or by the resumed training
    # if that run planned after the push and took it as the newest revision (latest wins;
    # add-batch then says the revision is covered and does not announce it).
    newest = stack.add_batch("--rows", "600", "--seed", "200")
    revisions.append(newest)

    def newest_trained() -> bool:
        found = stack.mlflow().search_model_versions("name='churn-model'")
        return any(v.tags.get(names.TAG_DVC_COMMIT) == newest for v in found)

    deadline = time.monotonic() + 900
    while not (all(r["state_type"] in FINAL for r in storm_runs()) and newest_trained()):
        assert time.monotonic() < deadline, [(r["name"], r["state_name"]) for r in storm_runs()]
        time.sleep(2)
    runs = storm_runs()
    summary = [(r["name"], r["state_name"], reason_of(r), r["state"]["message"]) for r in runs]
    assert all(r["state_type"] == "COMPLETED" for r in runs), summary
    assert stack.read_run(interrupted["id"])["state_type"] == "COMPLETED"

    # At most one training for the 50 alerts (a drift check of a champion promoted meanwhile
    # may start one of its own, with the columns it found).
    drift_runs = [r for r in runs if reason_of(r) == names.REASON_DRIFT_DETECTED]
    from_storm = [
        r for r in drift_runs
        if any(c.startswith("storm-") for c in r["parameters"]["trigger"]["drifted_columns"])
    ]  # fmt: skip
    assert len(from_storm) <= 1, summary

    versions = stack.mlflow().search_model_versions("name='churn-model'")
    trained = {v.tags[names.TAG_DVC_COMMIT][:8] for v in versions}
    assert newest[:8] in trained, summary
    # Every revision was trained, or superseded by a newer one that was (perhaps in turn): its
    # own run says so, or, if it got no run (its announcement or automation action failed
    # under the storm, or a newer revision was there first), its ledger entry does.
    ledger = {
        v["value"]["rev"]: v["value"]
        for v in stack.api("POST", "/variables/filter", json={"limit": 200})
        if isinstance(v["value"], dict) and "rev" in v["value"]
    }
    messages = {}
    for commit in revisions:
        # The revision's own run: the one its announcement started. A drift check that saw
        # this revision as the newest may start a training of it too (reason: drift); that one
        # is not a duplicate announcement, and the fingerprint check below rules out a
        # duplicate version.
        own = [
            r for r in runs
            if r["parameters"].get("rev") == commit
            and reason_of(r) == names.REASON_DATASET_UPDATED
        ]  # fmt: skip
        assert len(own) <= 1, summary
        record = ledger.get(commit, {}).get("message", f"no run, ledger: {ledger.get(commit)}")
        messages[commit[:8]] = own[0]["state"]["message"] if own else record
    for commit in revisions:
        assert accounted_for(commit, messages, trained)[-1] in trained
    # No duplicates: no two versions come from the same data, features, configuration and code.
    fingerprints = [v.tags.get(names.TAG_TRAINING_FINGERPRINT) for v in versions]
    assert len(fingerprints) == len(set(fingerprints)), fingerprints
    return ctrl_c_at
