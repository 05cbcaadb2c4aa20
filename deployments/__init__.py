"""driftloop's deployments: `prefect.yaml` at the project root, read the way Prefect reads it.

`prefect.yaml` is the source of truth for the deployments, their schedules, event triggers and
concurrency limits: edit it as any Prefect project's, then `make deploy` (or `make up`). This
package only reads it, with Prefect's own models (fenced in `deployments._prefect_yaml`), so
the app can look up what it needs (a deployment's name, its cron) without a copy of it.

Example:
    >>> schedule_crons(find_deployment("detect-churn-data"))
    ['*/5 * * * *']
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from deployments._prefect_yaml import DeploymentConfig, PrefectYamlModel

PREFECT_YAML: Path = PROJECT_ROOT / "prefect.yaml"


class DeploymentNotFoundError(LookupError):
    """prefect.yaml declares no deployment of that name."""


def read_prefect_yaml(path: Path = PREFECT_YAML) -> dict[str, Any]:
    """The file as plain YAML data (what `prefect deploy` validates)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_prefect_yaml(path: Path = PREFECT_YAML) -> PrefectYamlModel:
    """The file validated with Prefect's own model of it; raises pydantic's ValidationError
    where `prefect deploy` would skip the file."""
    from deployments._prefect_yaml import PrefectYamlModel

    return PrefectYamlModel.model_validate(read_prefect_yaml(path))


def load_deployments(path: Path = PREFECT_YAML) -> list[DeploymentConfig]:
    """Every deployment the file declares, in file order."""
    return list(load_prefect_yaml(path).deployments)


def find_deployment(name: str, path: Path = PREFECT_YAML) -> DeploymentConfig:
    """The deployment called `name`; DeploymentNotFoundError (naming the ones there are) if
    the file has none."""
    deployments = load_deployments(path)
    for deployment in deployments:
        if deployment.name == name:
            return deployment
    known = ", ".join(str(d.name) for d in deployments) or "none"
    raise DeploymentNotFoundError(f"{path} has no deployment {name!r} (it has: {known})")


def schedule_crons(deployment: DeploymentConfig) -> list[str]:
    """The cron expressions of the deployment's schedules, in file order (interval and rrule
    schedules have none and are left out)."""
    crons = []
    for item in deployment.schedules or []:
        # prefect.yaml may give a schedule flat (`cron: ...`) or wrapped (`schedule: {cron:}`).
        schedule = getattr(item, "schedule", item)
        cron = getattr(schedule, "cron", None)
        if isinstance(cron, str):
            crons.append(cron)
    return crons


__all__ = [
    "PREFECT_YAML",
    "DeploymentNotFoundError",
    "find_deployment",
    "load_deployments",
    "load_prefect_yaml",
    "read_prefect_yaml",
    "schedule_crons",
]
