"""The one module that imports Prefect's (private) prefect.yaml models.

`prefect deploy` validates prefect.yaml with the pydantic models in `prefect.cli.deploy._models`
and turns each schedule entry into a deployment schedule with
`prefect.cli.deploy._schedules`. Reading the file through the same code means driftloop sees
exactly what `prefect deploy` sees, with no mirror of Prefect's schema to keep in step.

Both modules are private (leading underscore): any Prefect release may move or rename them.
So they are imported here and nowhere else, and `tests/test_deployments.py` fails loudly,
naming this module, if the names below disappear. After a Prefect upgrade that moved them,
point these imports at the new location; nothing else in driftloop has to change.
"""

from __future__ import annotations

try:
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, RawScheduleConfig
    from prefect.cli.deploy._schedules import (
        _schedule_config_to_deployment_schedule as schedule_config_to_deployment_schedule,
    )
except ImportError as exc:  # pragma: no cover - only after a Prefect upgrade
    import prefect

    raise ImportError(
        f"Prefect {prefect.__version__} no longer has the prefect.yaml models driftloop reads "
        "prefect.yaml with (prefect.cli.deploy._models / _schedules): update the imports in "
        f"deployments/_prefect_yaml.py to where this Prefect keeps them ({exc})"
    ) from exc

__all__ = [
    "DeploymentConfig",
    "PrefectYamlModel",
    "RawScheduleConfig",
    "schedule_config_to_deployment_schedule",
]
