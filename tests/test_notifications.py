"""Notifications as `driftloop up` sets them up: driftloop's webhook block to a local receiver,
and the automations of deployments.notifications, on the session's real Prefect server. Events
are emitted from inside flow runs, as the flows emit them; the server renders the messages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.events import emit_event

from deployments.notifications import NOTICES
from driftloop.app.notify_receiver import make_server
from driftloop.core import names
from driftloop.core.settings import DriftloopSettings
from tests.conftest import free_port
from tests.helpers import unique


@pytest.fixture
def receiver(tmp_path: Path, prefect_server):
    """The local receiver, in a thread; yields the file it writes."""
    port = free_port()
    file = tmp_path / "notifications.jsonl"
    server = make_server("127.0.0.1", port, file)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, file
    server.shutdown()
    server.server_close()


def received(file: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


def test_what_a_person_is_told_and_how_often(receiver, tmp_path):
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    from driftloop.app.bootstrap import ensure_notification_automations, ensure_notification_block

    port, file = receiver
    settings = DriftloopSettings(home=tmp_path / "state", notify_port=port)
    block_id = ensure_notification_block(settings)
    assert ensure_notification_block(settings) == block_id  # kept, not recreated
    assert ensure_notification_automations(block_id, renotify_minutes=60) == len(NOTICES)
    assert ensure_notification_automations(block_id, renotify_minutes=60) == 0  # idempotent
    model = unique("churn")
    resource = {
        "prefect.resource.id": names.model_resource_id(model),
        "prefect.resource.name": model,
    }
    drift = {
        "drift_share": 0.5, "drifted_columns": ["plan", "region"], "champion_version": "2",
        "window_start": "2026-11-01", "window_end": "2026-11-08", "rev": "eb4d88c3" * 5,
        "reason": "no labeled data newer than champion v2 (commit eb4d88c3)",
        "mlflow_url": "http://mlflow.example/#/experiments/1/runs/abc",
    }  # fmt: skip

    @flow(name="notify-check")
    def checks() -> str:
        """Three hourly checks of a drifting model without new labels, one with, then a
        rejected challenger."""
        from prefect.runtime import flow_run

        for _ in range(3):  # drift, no new labels: told once, as a skipped retraining
            no_labels = {**resource, names.LABEL_NEW_LABELS: "false"}
            emit_event(names.EVENT_DRIFT_DETECTED, resource=no_labels, payload=drift)
            emit_event(names.EVENT_RETRAINING_SKIPPED, resource=no_labels, payload=drift)
        for _ in range(2):  # drift with new labels: told once
            with_labels = {**resource, names.LABEL_NEW_LABELS: "true"}
            emit_event(names.EVENT_DRIFT_DETECTED, resource=with_labels, payload=drift)
        for version in ("3", "4"):  # every rejection is told
            emit_event(
                names.EVENT_MODEL_REJECTED, resource=resource,
                payload={"version": version, "previous_version": "2",
                         "reason": f"v{version}: roc_auc 0.80 is below the floor 0.85",
                         "mlflow_url": f"http://mlflow.example/#/models/{model}/versions/{version}"},
            )  # fmt: skip
        return flow_run.get_id()

    @flow(name="notify-failing")
    def failing() -> None:
        """A driftloop run that fails."""
        raise ValueError("the feature view 'customer_stats' does not exist")

    from prefect import tags

    try:
        run_id = checks()
        with tags(names.TAG_DRIFTLOOP):
            failed = failing(return_state=True)
        assert failed.is_failed()

        deadline = time.monotonic() + 60
        while len(received(file)) < 5 and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # anything more that would come (a duplicate) has come by now
        got = received(file)
        subjects = sorted(m["subject"] for m in got if "notify-failing" not in m["subject"])
        assert subjects == sorted(
            [
                f"driftloop: retraining of {model} skipped, new labels needed",
                f"driftloop: drift on {model} (champion v2)",
                f"driftloop: {model} v3 rejected, champion v2 kept",
                f"driftloop: {model} v4 rejected, champion v2 kept",
            ]
        ), got
        by_subject = {m["subject"]: m["body"] for m in got}
        skipped = by_subject[f"driftloop: retraining of {model} skipped, new labels needed"]
        assert skipped.startswith("no labeled data newer than champion v2 (commit eb4d88c3). 50%")
        assert f"/runs/flow-run/{run_id}" in skipped  # the Prefect run that reported it
        assert "MLflow: http://mlflow.example/#/experiments/1/runs/abc" in skipped
        drifted = by_subject[f"driftloop: drift on {model} (champion v2)"]
        assert "50% of the features drifted (plan, region)" in drifted
        assert "commit eb4d88c3) starts" in drifted
        rejected = by_subject[f"driftloop: {model} v3 rejected, champion v2 kept"]
        assert rejected.startswith("v3: roc_auc 0.80 is below the floor 0.85")
        assert f"/#/models/{model}/versions/3" in rejected
        (failure,) = [m for m in got if "notify-failing" in m["subject"]]
        assert failure["subject"].endswith(" Failed")
        assert "customer_stats" in failure["body"]
        assert f"/runs/flow-run/{failed.state_details.flow_run_id}" in failure["body"]
    finally:
        with get_client(sync_client=True) as client:
            for notice in NOTICES:
                for automation in client.read_automations_by_name(notice.automation_name):
                    Automation.read(id=automation.id).delete()


def test_make_deploy_applies_the_automations(prefect_server, tmp_path):
    """`driftloop automations` (what `make deploy` runs after `prefect deploy --all`) creates the
    notification block and automations on the server at PREFECT_API_URL, and a second run
    changes nothing."""
    import os
    import subprocess
    import sys

    from prefect.automations import Automation

    from driftloop.core.settings import PROJECT_ROOT

    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "state"),
        "DRIFTLOOP_NOTIFY_PORT": str(free_port()),
        "DRIFTLOOP_RENOTIFY_MINUTES": "45",  # not the other test's 60: some must be rewritten
    }

    def apply() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "driftloop.app.cli", "automations"],
            env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    first = apply()
    assert first.returncode == 0, first.stderr
    assert "Notification automations on http://127.0.0.1:" in first.stdout, first.stdout
    assert "0 created or updated" not in first.stdout, first.stdout  # the interval changed
    again = apply()
    assert again.returncode == 0, again.stderr
    assert "0 created or updated" in again.stdout, again.stdout
    for notice in NOTICES:
        automation = Automation.read(name=f"driftloop-notify-{notice.slug}")
        assert automation.enabled, automation.name

    no_server = subprocess.run(
        [sys.executable, "-m", "driftloop.app.cli", "automations"],
        env={**env, "PREFECT_API_URL": ""}, cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert no_server.returncode == 1
    assert "PREFECT_API_URL is not set" in no_server.stderr
