"""A deployment as driftloop declares it: the one source for prefect.yaml and `make up`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from driftloop import names


@dataclass(frozen=True)
class Schedule:
    """A cron schedule (Prefect evaluates it in `timezone`)."""

    cron: str
    timezone: str = "UTC"

    def to_yaml(self) -> dict[str, Any]:
        return {"cron": self.cron, "timezone": self.timezone, "active": True}


@dataclass(frozen=True)
class DeploymentSpec:
    """Everything `prefect deploy` needs to know about one deployment."""

    name: str
    entrypoint: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[Schedule, ...] = ()
    triggers: tuple[dict[str, Any], ...] = ()
    concurrency_limit: int | None = None
    collision_strategy: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def flow_name(self) -> str:
        """The flow's name as Prefect knows it (import-free: read from the entrypoint file)."""
        import ast
        from pathlib import Path

        from driftloop.settings import PROJECT_ROOT

        path, function = self.entrypoint.split(":")
        tree = ast.parse((PROJECT_ROOT / Path(path)).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == function:
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call):
                        for keyword in decorator.keywords:
                            if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                                return str(keyword.value.value)
                return function.replace("_", "-")
        raise ValueError(f"{self.entrypoint}: no function {function!r}")

    @property
    def full_name(self) -> str:
        """`flow-name/deployment-name`, as `run_deployment` takes it."""
        return f"{self.flow_name}/{self.name}"

    def to_yaml(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "entrypoint": self.entrypoint,
            "tags": list(self.tags),
            "parameters": self.parameters,
            "work_pool": {"name": names.WORK_POOL, "job_variables": {}},
            "schedules": [s.to_yaml() for s in self.schedules],
        }
        if self.concurrency_limit is not None:
            entry["concurrency_limit"] = {
                "limit": self.concurrency_limit,
                "collision_strategy": self.collision_strategy or "ENQUEUE",
            }
        if self.triggers:
            entry["triggers"] = list(self.triggers)
        return entry
