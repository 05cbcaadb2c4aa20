"""prefect.yaml is rendered from deployments/ and stays in sync; specs match the flows."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from deployments import DEPLOYMENTS
from deployments.render import PREFECT_YAML, render
from driftloop import names
from driftloop.settings import PROJECT_ROOT


def test_prefect_yaml_is_rendered_from_the_specs():
    assert PREFECT_YAML.read_text() == render(), "run `make prefect.yaml`"
    document = yaml.safe_load(PREFECT_YAML.read_text())
    assert [d["name"] for d in document["deployments"]] == [s.name for s in DEPLOYMENTS]
    assert {d["work_pool"]["name"] for d in document["deployments"]} == {names.WORK_POOL}


def _load_flow(entrypoint: str):
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location("entry", PROJECT_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=[s.name for s in DEPLOYMENTS])
def test_each_deployment_matches_its_flow(spec):
    flow = _load_flow(spec.entrypoint)
    assert flow.name == spec.flow_name
    flow.validate_parameters(spec.parameters)  # raises if the parameters do not fit
