"""`driftloop up` as a user runs it, cycle after cycle, on one shared stack (conftest's
`stack`): the tests build on each other in file order, and call no flow themselves.

1. New data closes the loop (a new champion, its scoring), while MLflow, the Prefect server
   and the worker are each killed during that training and restarted.
2. The loop settles, cycle after cycle: a check after the promotion finds no drift; drifted
   traffic without labels is reported but retrains nothing; concept drift shows as a drop of
   the champion's score on new labels, and the training records it.
3. An event storm (50 drift alerts, 5 revisions back to back), Ctrl-C while it is being worked
   off, `make up` again and more new data: every revision is trained or visibly superseded by
   a trained one, the interrupted training is resumed, nothing is duplicated or cancelled.
4. A custom run from the Prefect UI in a real browser.
5. `kill -9` of `driftloop up`, `make down`, `make up`: nothing left behind, the same champion
   and data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from driftloop.core import names
from driftloop.core.settings import PROJECT_ROOT
from tests.scenarios import (
    new_data_closes_the_loop_while_components_die,
    storm_then_ctrl_c_then_up_loses_no_revision,
)
from tests.stack import (
    TRAINING,
    Stack,
    by_automation,
    processes_of,
)

pytestmark = pytest.mark.slow


def test_new_data_closes_the_loop_even_when_components_die(stack: Stack):
    """A drifted batch is pushed; automations train and promote a new champion, and the
    promotion starts batch scoring. During that training MLflow, the Prefect server and the
    worker are killed, one after the other: each is restarted, and the training rides
    through on its retries."""
    new_data_closes_the_loop_while_components_die(
        stack, ("mlflow-server", "prefect-server", "prefect-worker")
    )


MONITOR = "monitor-churn-drift"


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def check_drift(stack: Stack) -> tuple[dict, list[dict]]:
    """A run of the drift check, as its hourly schedule starts it, and the events it emitted.
    The deployment runs one check at a time and cancels a new one that finds its slot taken:
    by a `check-after-promotion` run the last promotion started, or by one its schedule
    started at the same moment. So each attempt waits for the slot to be free first, and a
    cancelled attempt is started again."""
    for _ in range(3):
        deadline = time.monotonic() + 180
        while any(r["state_type"] in ("SCHEDULED", "PENDING", "RUNNING")
                  for r in stack.flow_runs(MONITOR)):  # fmt: skip
            assert time.monotonic() < deadline, "the drift check's slot stayed taken for 180 s"
            time.sleep(1)
        since = now_iso()
        run = stack.run_deployment(MONITOR)
        if run["state_type"] != "CANCELLED":
            break
    deadline = time.monotonic() + 30  # the server stores events a moment after they are sent
    while True:
        emitted = [
            e
            for name in (names.EVENT_DRIFT_DETECTED, names.EVENT_DRIFT_CHECKED,
                         names.EVENT_RETRAINING_SKIPPED)
            for e in stack.events(name, since)
            if f"prefect.flow-run.{run['id']}" in {r["prefect.resource.id"] for r in e["related"]}
        ]  # fmt: skip
        kinds = {e["event"] for e in emitted}
        complete = names.EVENT_DRIFT_CHECKED in kinds or {
            names.EVENT_DRIFT_DETECTED, names.EVENT_RETRAINING_SKIPPED
        } <= kinds  # fmt: skip
        if complete or time.monotonic() > deadline:
            return run, emitted
        time.sleep(1)


# The loop after the drifted batch of the first test promoted v2, cycle after cycle. The three
# tests below run in order on the module's stack; none of them may register a duplicate.
def _versions(stack: Stack) -> list:
    return stack.mlflow().search_model_versions("name='churn-model'")


def _trainings(stack: Stack) -> set[str]:
    return {r["id"] for r in stack.flow_runs(TRAINING)}


def _assert_no_duplicate_version(stack: Stack) -> None:
    fingerprints = [v.tags.get(names.TAG_TRAINING_FINGERPRINT) for v in _versions(stack)]
    assert len(fingerprints) == len(set(fingerprints)), fingerprints


def test_cycle_1_the_check_a_promotion_starts_settles(stack: Stack):
    """The drift check v2's promotion started at once (`check-after-promotion`) reports
    `drift.checked`: v2 was refit on its newest data, so there is nothing to retrain on."""
    champion = stack.mlflow().get_model_version_by_alias("churn-model", "champion")
    assert champion.version == "2"
    assert champion.tags[names.TAG_FITTED_UNTIL]  # refit on its holdout: it saw the newest rows
    deadline = time.monotonic() + 180
    while True:
        after_v2 = [
            e for name in (names.EVENT_DRIFT_DETECTED, names.EVENT_DRIFT_CHECKED)
            for e in stack.events(name, "2000-01-01T00:00:00+00:00")
            if e["payload"]["champion_version"] == "2"
        ]  # fmt: skip
        if after_v2 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert after_v2, "no drift check of v2 within 180 s of the test's start"
    checked = min(after_v2, key=lambda e: e["occurred"])
    assert checked["event"] == names.EVENT_DRIFT_CHECKED, checked["payload"]
    assert checked["payload"]["rev"] == champion.tags[names.TAG_DVC_COMMIT]
    assert checked["resource"][names.LABEL_NEW_LABELS] == "false"
    (check_run,) = [
        r for r in stack.flow_runs(MONITOR)
        if f"prefect.flow-run.{r['id']}" in {x["prefect.resource.id"] for x in checked["related"]}
    ]  # fmt: skip
    assert by_automation(check_run), check_run["created_by"]
    _assert_no_duplicate_version(stack)


def test_cycle_2_drift_without_labels_retrains_nothing_all_day(stack: Stack):
    """Drifted traffic with no new labels: each check reports the drift, says retraining is
    skipped for lack of labels, and starts nothing, over a day of hourly checks; a person is
    told once. (Not the drift v2 was trained on: its columns and direction are others.)"""
    champion = stack.mlflow().get_model_version_by_alias("churn-model", "champion")
    before_versions, before_runs = len(_versions(stack)), _trainings(stack)
    stack.add_batch(
        "--no-labels", "--rows", "4000", "--seed", "250",
        "--shift", "tenure_months=-1.5", "--shift", "days_since_last_login=1.5",
        "--shift", "late_payments_90d=1.5", "--shift", "avg_session_minutes=-1.5",
        "--new-category", "region=offshore",
    )  # fmt: skip
    for _ in range(2):
        check, emitted = check_drift(stack)
        assert check["state_type"] == "COMPLETED", check["state"]
        assert sorted(e["event"] for e in emitted) == [
            names.EVENT_DRIFT_DETECTED, names.EVENT_RETRAINING_SKIPPED
        ]  # fmt: skip
        (event,) = [e for e in emitted if e["event"] == names.EVENT_DRIFT_DETECTED]
        assert event["resource"][names.LABEL_NEW_LABELS] == "false"
        assert event["payload"]["rev"] == champion.tags[names.TAG_DVC_COMMIT]
        assert event["payload"]["reason"] == (
            f"no labeled data newer than champion v2 "
            f"(commit {champion.tags[names.TAG_DVC_COMMIT][:8]})"
        )
    # The rest of a day of hourly checks. On unchanged data a check's verdict is the same each
    # hour (the two real checks above agree), so the other 22 are its events, sent again as
    # each check would send them: the real automations judge every one.
    from uuid import uuid4

    day = [
        {**e, "id": str(uuid4()), "occurred": now_iso(), "follows": None}
        for _ in range(22)
        for e in emitted
    ]  # fmt: skip
    stack.api("POST", "/events", json=day)
    time.sleep(10)  # what an automation would have started by now
    assert _trainings(stack) == before_runs
    assert len(_versions(stack)) == before_versions
    # A person is told once (the automation holds repeats back for the re-notify interval),
    # with the reason and links to the check's Prefect run and MLflow run.
    told = [n for n in stack.notifications() if "skipped, new labels needed" in n["subject"]]
    assert len(told) == 1, stack.notifications()
    assert told[0]["body"].startswith("no labeled data newer than champion v2"), told
    assert "/runs/flow-run/" in told[0]["body"], told
    assert "MLflow: http" in told[0]["body"], told
    _assert_no_duplicate_version(stack)


def test_cycle_3_concept_drift_is_seen_and_recorded(stack: Stack):
    """Concept drift (the label's relation to the features changes, the features do not): the
    champion's score on the new labels drops, `performance.degraded` is emitted and the
    training records it, ending promoted or rejected with a reason; a person is told both."""
    client = stack.mlflow()
    since = now_iso()
    commit = stack.add_batch("--concept-shift", "0.7", "--rows", "1500", "--seed", "300")
    run = stack.wait_for_run(TRAINING, lambda r: r["parameters"].get("rev") == commit, 600)
    assert run["state_type"] == "COMPLETED", run["state"]
    (degraded,) = stack.events(names.EVENT_PERFORMANCE_DEGRADED, since)
    assert degraded["payload"]["rev"] == commit
    assert degraded["payload"]["champion_version"] == "2"
    assert degraded["payload"]["score"] < degraded["payload"]["baseline"] - 0.03
    (version,) = [v for v in _versions(stack) if v.tags.get(names.TAG_FLOW_RUN_ID) == run["id"]]
    assert version.tags[names.TAG_TRIGGER_PERFORMANCE_DROP] == degraded["payload"]["degraded"]
    assert version.tags[names.TAG_DECISION] in (names.DECISION_PROMOTED, names.DECISION_REJECTED)
    assert run["state"]["message"].startswith(("Promoted: ", "Kept champion: ")), run["state"]
    history = client.get_metric_history(degraded["payload"]["monitoring_run_id"], "live_roc_auc")
    assert [round(m.value, 6) for m in history][-1] == round(degraded["payload"]["score"], 6)
    # Told: the degradation, and the outcome (with the version's MLflow page).
    deadline = time.monotonic() + 30
    while True:
        subjects = [n["subject"] for n in stack.notifications()]
        outcome = [s for s in subjects if f"churn-model v{version.version} " in s]
        if (outcome and "driftloop: churn-model v2 degraded" in subjects) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(1)
    assert subjects.count("driftloop: churn-model v2 degraded") == 1, subjects
    assert outcome == [
        f"driftloop: churn-model v{version.version} is the champion"
        if version.tags[names.TAG_DECISION] == names.DECISION_PROMOTED
        else f"driftloop: churn-model v{version.version} rejected, champion v2 kept"
    ], subjects
    _assert_no_duplicate_version(stack)


def test_a_storm_then_ctrl_c_then_up_loses_no_revision(stack: Stack):
    """50 drift alerts at once and 5 revisions back to back; Ctrl-C while a training works
    through them; `make up` again and one more revision: every revision is trained or
    visibly superseded by a trained one (tests/scenarios.py)."""
    storm_then_ctrl_c_then_up_loses_no_revision(stack)


def test_a_custom_run_started_from_the_ui_form_completes(stack: Stack):
    """A real browser (Debian's chromium via Playwright): the deployment page, the custom run
    form with a non-default parameter, the run followed to Completed, its artifacts."""
    from tests.browser import custom_run_from_the_ui, ensure_chromium

    missing = ensure_chromium()
    if missing:
        pytest.skip(f"NO BROWSER TEST: chromium cannot be installed here: {missing}")
    shots = Path(os.environ.get("DRIFTLOOP_SCREENSHOTS", stack.home / "screenshots"))
    run_id = custom_run_from_the_ui(stack.prefect_url, TRAINING, 3, shots)

    run = stack.read_run(run_id)
    assert run["state_type"] == "COMPLETED"
    assert run["parameters"]["search"]["n_trials"] == 3  # the value typed into the form
    assert {p.name for p in shots.glob("*.png")} >= {
        "deployment.png", "custom-run-form.png", "flow-run.png", "artifacts.png"
    }  # fmt: skip


def test_kill_9_of_up_then_down_then_up_keeps_the_champion_and_the_data(stack: Stack):
    champion = stack.champion()
    registry = stack.home / "data" / "registry"
    tags = subprocess.run(
        ["git", "tag"], cwd=registry, capture_output=True, text=True, check=True
    ).stdout
    feature_files = sorted((stack.home / "feast" / "data").glob("*.parquet"))
    feature_rows = [len(pd.read_parquet(f)) for f in feature_files]

    stack.up.process.kill()  # SIGKILL: no chance to stop anything itself
    stack.up.process.wait()
    down = subprocess.run(
        [sys.executable, "-m", "driftloop.app.cli", "down"], env=stack.env, cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 30
    while processes_of(stack.home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(stack.home) == []

    up = stack.restart()
    assert not any("prepared demo" in line for line in up.lines)
    assert not any("Training " in line for line in up.lines)  # no second first training
    assert stack.champion() == champion
    assert (
        subprocess.run(
            ["git", "tag"], cwd=registry, capture_output=True, text=True, check=True
        ).stdout
        == tags
    )
    assert [len(pd.read_parquet(f)) for f in feature_files] == feature_rows

    assert up.stop(signal.SIGTERM) == 0
    assert processes_of(stack.home) == []
    for part in (
        "prefect/prefect.db",
        "mlflow/mlflow.db",
        "feast/registry.db",
        "data/registry/.dvc",
        "data/dvc-remote",
        "results",
        "logs/prefect-worker.log",
    ):
        assert (stack.home / part).exists(), part
