"""prefect.yaml, checked the way `prefect deploy` reads it, against the flows it deploys.

The file is edited by hand; these tests are its compiler: Prefect's own models validate the
file, each schedule, trigger and concurrency limit (unknown keys fail, where Prefect would
ignore them silently), Prefect's loader imports each entrypoint, and the flow validates the
parameters of the deployment, of each schedule and of each trigger's rendered templates.
"""

from __future__ import annotations

import copy
import functools
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import (
    PREFECT_YAML,
    DeploymentNotFoundError,
    find_deployment,
    load_deployments,
    read_prefect_yaml,
    schedule_crons,
)
from driftloop.app import demo
from driftloop.core import names

# What the triggers' templates are rendered with: an event as driftloop's flows emit it.
SAMPLE_EVENT = {"payload": {"rev": "abc123", "drifted_columns": ["plan", "monthly_charges"]}}

# prefect.yaml keys Prefect documents but its model does not declare: a place for YAML anchors.
DOCUMENTED_EXTRA_KEYS = {"definitions"}

DEPLOYMENT_NAMES = [d["name"] for d in read_prefect_yaml()["deployments"]]

# A second model's deployments, as a user appends them to prefect.yaml (README, "A second
# model"): the same flows, other block documents (named `fraud`), other resource ids. The
# `fraud` dataset block's `name` is `fraud` and the `fraud` MLflow block's
# `registered_model_name` is `fraud-model`; the flows emit their events under those names.
SECOND_MODEL = """
- name: train-fraud-model
  description: Train the fraud model; promote it only if it beats the fraud champion.
  entrypoint: flows.training.train
  tags: [driftloop, training]
  parameters:
    features:
      feature_service: fraud_model_v1
    dataset_block: fraud
    feast_block: fraud
    mlflow_block: fraud
  work_pool:
    name: driftloop-process
  schedules:
  - cron: 0 3 * * *
    timezone: UTC
    slug: nightly-retraining
    parameters:
      trigger:
        reason: schedule
  concurrency_limit:
    limit: 1
    collision_strategy: ENQUEUE
  triggers:
  - name: train-fraud-on-new-data
    type: event
    match:
      prefect.resource.id: driftloop.dataset.fraud
    expect: [driftloop.dataset.updated]
    posture: Reactive
    threshold: 1
    within: 0
    parameters:
      rev: '{{ event.payload.rev }}'
      trigger:
        reason: driftloop.dataset.updated
  - name: retrain-fraud-on-drift
    type: event
    match:
      prefect.resource.id: driftloop.model.fraud-model
      driftloop.new-labels: 'true'
    expect: [driftloop.drift.detected]
    posture: Reactive
    threshold: 1
    within: 600
    parameters:
      rev: '{{ event.payload.rev }}'
      trigger:
        reason: driftloop.drift.detected
        drifted_columns: '{{ event.payload.drifted_columns }}'

- name: detect-fraud-data
  entrypoint: flows.new_data.detect_new_data
  tags: [driftloop, monitoring]
  parameters:
    dataset_block: fraud
  work_pool:
    name: driftloop-process
  schedules:
  - cron: '*/5 * * * *'
    timezone: UTC
    slug: new-data-check
  concurrency_limit:
    limit: 1
    collision_strategy: CANCEL_NEW

- name: monitor-fraud-drift
  entrypoint: flows.drift_monitoring.monitor_drift
  tags: [driftloop, monitoring]
  parameters:
    dataset_block: fraud
    feast_block: fraud
    mlflow_block: fraud
  work_pool:
    name: driftloop-process
  schedules:
  - cron: 30 * * * *
    timezone: UTC
    slug: hourly-drift-check
  concurrency_limit:
    limit: 1
    collision_strategy: CANCEL_NEW
  triggers:
  - name: check-fraud-after-promotion
    type: event
    match:
      prefect.resource.id: driftloop.model.fraud-model
    expect: [driftloop.model.promoted]
    posture: Reactive
    threshold: 1
    within: 0

- name: materialize-fraud-features
  entrypoint: flows.materialization.materialize
  tags: [driftloop, features]
  parameters:
    feast_block: fraud
  work_pool:
    name: driftloop-process
  schedules:
  - cron: '*/15 * * * *'
    timezone: UTC
    slug: materialization
  concurrency_limit:
    limit: 1
    collision_strategy: CANCEL_NEW

- name: score-fraud-batch
  entrypoint: flows.batch_scoring.score_batch
  tags: [driftloop, scoring]
  parameters:
    dataset_block: fraud
    feast_block: fraud
    mlflow_block: fraud
  work_pool:
    name: driftloop-process
  concurrency_limit:
    limit: 1
    collision_strategy: ENQUEUE
  triggers:
  - name: score-fraud-on-promotion
    type: event
    match:
      prefect.resource.id: driftloop.model.fraud-model
    expect: [driftloop.model.promoted]
    posture: Reactive
    threshold: 1
    within: 0
"""


@functools.cache
def _load_flow(entrypoint: str):
    # How a worker loads it: Prefect's loader, from the module-path entrypoint.
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint)


def _render(parameters: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """What Prefect's run-deployment action does with an event's trigger parameters: upgrade
    plain Jinja strings to templates and render them (a single expression keeps its type)."""
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    parameters = copy.deepcopy(parameters)
    RunDeployment._upgrade_v1_templates(parameters)
    return hydrate(
        parameters,
        HydrationContext(render_jinja=True, jinja_context={"event": event}, raise_on_error=True),
    )


def _known_keys(model: Any) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()} | set(
        model.model_fields
    )


def _assert_known_keys(entry: dict[str, Any], model: Any, where: str) -> None:
    """Prefect's prefect.yaml models ignore unknown keys: a typo (`schedule_s`) would be
    dropped without a word. Here it fails."""
    unknown = set(entry) - _known_keys(model)
    assert not unknown, f"{where}: keys {sorted(unknown)} are not {model.__name__} fields"


def check_file(path: Path) -> None:
    """The file as a whole: Prefect's PrefectYamlModel, known keys, unique names."""
    from deployments import load_prefect_yaml
    from deployments._prefect_yaml import PrefectYamlModel

    raw = read_prefect_yaml(path)
    unknown = set(raw) - _known_keys(PrefectYamlModel) - DOCUMENTED_EXTRA_KEYS
    assert not unknown, f"{path}: unknown top-level keys {sorted(unknown)}"
    model = load_prefect_yaml(path)
    assert len(model.deployments) == len(raw["deployments"])
    deployment_names = [d.name for d in model.deployments]
    # `prefect deploy --all` would deploy a repeated name twice, the second over the first.
    assert len(deployment_names) == len(set(deployment_names)), deployment_names
    # Each trigger becomes an automation of that name: one name, one automation in the UI.
    trigger_names = [t["name"] for d in raw["deployments"] for t in d.get("triggers") or []]
    assert len(trigger_names) == len(set(trigger_names)), trigger_names


def check_deployment(path: Path, name: str) -> None:
    """One deployment, as `prefect deploy` builds it, against the flow it deploys."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.events import DeploymentEventTrigger, DeploymentTriggerTypes
    from pydantic import TypeAdapter

    from deployments._prefect_yaml import (
        DeploymentConfig,
        RawScheduleConfig,
        schedule_config_to_deployment_schedule,
    )

    (entry,) = [d for d in read_prefect_yaml(path)["deployments"] if d["name"] == name]
    deployment = find_deployment(name, path)
    _assert_known_keys(entry, DeploymentConfig, name)
    assert deployment.work_pool is not None
    assert deployment.work_pool.name == names.WORK_POOL

    entrypoint = deployment.entrypoint
    assert entrypoint, f"{name}: no entrypoint"
    assert ":" not in entrypoint, "use a module path so Ray workers can import the flow"
    flow = _load_flow(entrypoint)
    assert flow.__module__.startswith("flows."), flow.__module__
    flow.validate_parameters(deployment.parameters)  # raises if the parameters do not fit

    slugs = []
    for raw_schedule in entry.get("schedules") or []:
        RawScheduleConfig.model_validate(raw_schedule)  # the CLI's accepted shape, no extras
        schedule = DeploymentScheduleCreate(
            **schedule_config_to_deployment_schedule(copy.deepcopy(raw_schedule))
        )
        # The slug is how a redeploy updates the schedule in place instead of adding one.
        assert schedule.slug, f"{name}: a schedule without a slug"
        slugs.append(schedule.slug)
        flow.validate_parameters({**deployment.parameters, **schedule.parameters})
    assert len(slugs) == len(set(slugs)), slugs

    limit = entry.get("concurrency_limit")
    if isinstance(limit, dict):
        _assert_known_keys(limit, ConcurrencyLimitConfig, f"{name}.concurrency_limit")
        ConcurrencyLimitConfig.model_validate(limit)

    adapter = TypeAdapter(DeploymentTriggerTypes)
    for raw_trigger in entry.get("triggers") or []:
        where = f"{name}.triggers.{raw_trigger.get('name')}"
        _assert_known_keys(raw_trigger, DeploymentEventTrigger, where)
        trigger = adapter.validate_python(copy.deepcopy(raw_trigger))
        assert isinstance(trigger, DeploymentEventTrigger), where
        rendered = _render(raw_trigger.get("parameters") or {}, SAMPLE_EVENT)
        flow.validate_parameters({**deployment.parameters, **rendered})


def test_prefects_private_prefect_yaml_models_are_still_there():
    """deployments/_prefect_yaml.py reads prefect.yaml with these private Prefect names. If
    this fails after a Prefect upgrade, point that module at their new home."""
    import prefect

    wanted = {
        "prefect.cli.deploy._models": ("DeploymentConfig", "PrefectYamlModel", "RawScheduleConfig"),
        "prefect.cli.deploy._schedules": ("_schedule_config_to_deployment_schedule",),
    }
    for module_name, attributes in wanted.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            pytest.fail(
                f"Prefect {prefect.__version__} has no {module_name} ({exc}): update "
                "deployments/_prefect_yaml.py"
            )
        missing = [a for a in attributes if not hasattr(module, a)]
        assert not missing, (
            f"Prefect {prefect.__version__}: {module_name} lost {missing}; update "
            "deployments/_prefect_yaml.py"
        )
    # The fields driftloop's accessors read.
    models = importlib.import_module("prefect.cli.deploy._models")
    fields = set(models.DeploymentConfig.model_fields)
    for field in ("name", "entrypoint", "parameters", "schedules", "triggers", "work_pool"):
        assert field in fields, f"DeploymentConfig lost {field!r}"
    assert "concurrency_limit" in fields, "DeploymentConfig lost 'concurrency_limit'"


def test_prefect_yaml_validates_as_prefect_deploy_reads_it():
    check_file(PREFECT_YAML)
    document = read_prefect_yaml()
    assert [d["name"] for d in document["deployments"]] == [
        "train-churn-model",
        "detect-churn-data",
        "monitor-churn-drift",
        "monitor-churn-served-drift",
        "swap-churn-serving",
        "roll-back-churn-champion",
        "materialize-churn-features",
        "score-churn-batch",
    ]
    assert {d["work_pool"]["name"] for d in document["deployments"]} == {names.WORK_POOL}


@pytest.mark.parametrize("name", DEPLOYMENT_NAMES)
def test_each_deployment_matches_its_flow(name):
    check_deployment(PREFECT_YAML, name)


def test_schedules_triggers_and_limits_are_declared():
    document = read_prefect_yaml()
    by_name = {d["name"]: d for d in document["deployments"]}
    crons = {name: [s["cron"] for s in d["schedules"]] for name, d in by_name.items()}
    assert crons == {
        "train-churn-model": ["0 2 * * *"],
        "detect-churn-data": ["*/5 * * * *"],
        "monitor-churn-drift": ["0 * * * *"],
        "monitor-churn-served-drift": ["30 * * * *"],
        "swap-churn-serving": [],
        "roll-back-churn-champion": [],
        "materialize-churn-features": ["*/15 * * * *"],
        "score-churn-batch": [],
    }
    # Served drift needs traffic: its schedule is there, off until a user switches it on.
    (served,) = by_name["monitor-churn-served-drift"]["schedules"]
    assert served["active"] is False
    assert by_name["monitor-churn-served-drift"]["parameters"]["window"]["source"] == "served"
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
    # ... and the serving application swaps to it.
    (swap,) = by_name["swap-churn-serving"]["triggers"]
    assert swap["expect"] == [names.EVENT_MODEL_PROMOTED]
    assert by_name["swap-churn-serving"]["concurrency_limit"]["collision_strategy"] == "ENQUEUE"


def test_trigger_templates_render_to_valid_flow_parameters():
    """What Prefect's run-deployment action does with an event: render the templates, then the
    flow validates them (a list stays a list)."""
    training = find_deployment(demo.DEMO_TRAINING_DEPLOYMENT)
    flow = _load_flow(training.entrypoint)
    assert training.triggers
    for trigger in training.triggers:
        rendered = _render(trigger["parameters"], SAMPLE_EVENT)
        valid = flow.validate_parameters({**training.parameters, **rendered})
        if trigger["expect"] == [names.EVENT_DRIFT_DETECTED]:
            assert valid["trigger"].drifted_columns == ["plan", "monthly_charges"]
        else:
            assert valid["rev"] == "abc123"


def test_the_app_finds_the_demo_deployments_it_names():
    """`driftloop up` runs `<names.FLOW_TRAIN>/<demo training deployment>`; `add-batch` quotes
    the new-data check's cron. Both come from prefect.yaml."""
    training = find_deployment(demo.DEMO_TRAINING_DEPLOYMENT)
    assert _load_flow(training.entrypoint).name == names.FLOW_TRAIN
    assert schedule_crons(find_deployment(demo.DEMO_NEW_DATA_DEPLOYMENT)) == ["*/5 * * * *"]
    assert schedule_crons(find_deployment("score-churn-batch")) == []
    with pytest.raises(DeploymentNotFoundError, match="train-churn-model"):
        find_deployment("no-such-deployment")


def test_the_demo_deployments_use_the_demo_names():
    """prefect.yaml spells the demo's names that driftloop.app.demo configures its blocks with."""
    by_name = {d.name: d for d in load_deployments()}
    training = by_name[demo.DEMO_TRAINING_DEPLOYMENT]
    assert training.parameters["features"] == {"feature_service": demo.DEMO_FEATURE_SERVICE}
    matched = {
        t["match"]["prefect.resource.id"] for d in by_name.values() for t in d.triggers or []
    }
    assert matched == {
        names.dataset_resource_id(demo.DEMO_DATASET),
        names.model_resource_id(demo.DEMO_MODEL_NAME),
    }


def test_a_second_model_is_an_edit_to_prefect_yaml(tmp_path):
    """A second model's deployments are an edit to prefect.yaml (and block documents named in
    its parameters): the same flows, no Python change, validated as the first model's."""
    document = read_prefect_yaml()
    churn = copy.deepcopy(document["deployments"])
    added = yaml.safe_load(SECOND_MODEL)
    document["deployments"] += added
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))

    check_file(path)
    for entry in added:
        check_deployment(path, entry["name"])
    # Nothing new to import: the second model runs the flows the first one does.
    assert {d["entrypoint"] for d in added} <= {d["entrypoint"] for d in churn}
    assert read_prefect_yaml(path)["deployments"][: len(churn)] == churn
    # Every block the second model names is a parameter of its flow, set to its documents.
    training = find_deployment("train-fraud-model", path)
    blocks = {k: v for k, v in training.parameters.items() if k.endswith("_block")}
    assert blocks == {"dataset_block": "fraud", "feast_block": "fraud", "mlflow_block": "fraud"}
