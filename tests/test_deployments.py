"""prefect.yaml is rendered from deployments/ and stays in sync; specs match the flows."""

from __future__ import annotations

import pytest
import yaml

from deployments import DEPLOYMENTS
from deployments.render import PREFECT_YAML, render
from driftloop.core import names


def test_prefect_yaml_is_rendered_from_the_specs():
    assert PREFECT_YAML.read_text() == render(), "run `make prefect.yaml`"
    document = yaml.safe_load(PREFECT_YAML.read_text())
    assert [d["name"] for d in document["deployments"]] == [s.name for s in DEPLOYMENTS]
    assert {d["work_pool"]["name"] for d in document["deployments"]} == {names.WORK_POOL}


def _load_flow(entrypoint: str):
    # How a worker loads it: Prefect's loader, from the module-path entrypoint.
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint)


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=[s.name for s in DEPLOYMENTS])
def test_each_deployment_matches_its_flow(spec):
    assert ":" not in spec.entrypoint, "use a module path so Ray workers can import the flow"
    flow = _load_flow(spec.entrypoint)
    assert flow.__module__.startswith("flows."), flow.__module__
    assert flow.name == spec.flow_name
    flow.validate_parameters(spec.parameters)  # raises if the parameters do not fit


def test_schedules_triggers_and_limits_are_declared():
    document = yaml.safe_load(PREFECT_YAML.read_text())
    by_name = {d["name"]: d for d in document["deployments"]}
    crons = {name: [s["cron"] for s in d["schedules"]] for name, d in by_name.items()}
    assert crons == {
        "train-churn-model": ["0 2 * * *"],
        "detect-churn-data": ["*/5 * * * *"],
        "monitor-churn-drift": ["0 * * * *"],
        "materialize-churn-features": ["*/15 * * * *"],
        "score-churn-batch": [],
    }
    training = by_name["train-churn-model"]
    # One training at a time, and no run dropped: they queue (latest wins when they start).
    assert training["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    triggers = {t["expect"][0]: t for t in training["triggers"]}
    assert triggers[names.EVENT_DATASET_UPDATED]["parameters"]["rev"] == "{{ event.payload.rev }}"
    assert triggers[names.EVENT_DATASET_UPDATED]["within"] == 0  # every revision counts
    assert triggers[names.EVENT_DRIFT_DETECTED]["within"] == 600  # a burst starts one run
    drift = triggers[names.EVENT_DRIFT_DETECTED]["parameters"]["trigger"]
    assert drift["drifted_columns"] == "{{ event.payload.drifted_columns }}"
    (scoring,) = by_name["score-churn-batch"]["triggers"]
    assert scoring["expect"] == [names.EVENT_MODEL_PROMOTED]
    # A new champion's drift is checked at once: that check is where the loop settles.
    (check,) = by_name["monitor-churn-drift"]["triggers"]
    assert check["expect"] == [names.EVENT_MODEL_PROMOTED]


def test_trigger_templates_render_to_valid_flow_parameters():
    """What Prefect's run-deployment action does with an event: render the templates, then the
    flow validates them (a list stays a list)."""
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    from deployments import TRAIN_CHURN_MODEL

    event = {"payload": {"rev": "abc123", "drifted_columns": ["plan", "monthly_charges"]}}
    flow = _load_flow(TRAIN_CHURN_MODEL.entrypoint)
    for trigger in TRAIN_CHURN_MODEL.triggers:
        parameters = dict(trigger.parameters)
        RunDeployment._upgrade_v1_templates(parameters)
        rendered = hydrate(
            parameters,
            HydrationContext(render_jinja=True, jinja_context={"event": event},
                             raise_on_error=True),
        )  # fmt: skip
        valid = flow.validate_parameters({**TRAIN_CHURN_MODEL.parameters, **rendered})
        if trigger.event == names.EVENT_DRIFT_DETECTED:
            assert valid["trigger"].drifted_columns == ["plan", "monthly_charges"]
        else:
            assert valid["rev"] == "abc123"
