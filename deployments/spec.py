"""A deployment as driftloop declares it: the one source for prefect.yaml and `make up`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from driftloop.core import names


@dataclass(frozen=True)
class Schedule:
    """A cron schedule (Prefect evaluates it in `timezone`), with parameters for its runs."""

    cron: str
    slug: str
    timezone: str = "UTC"
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "cron": self.cron,
            "timezone": self.timezone,
            "slug": self.slug,
            "active": True,
        }
        if self.parameters:
            entry["parameters"] = self.parameters
        return entry


@dataclass(frozen=True)
class EventTrigger:
    """Start a run of the deployment when an event arrives (a Prefect deployment trigger).

    `parameters` may use Jinja on the event (``"{{ event.payload.rev }}"``); a template that
    is a single expression keeps the value's type (a list stays a list).
    """

    name: str
    event: str
    resource_id: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # Fire on the first matching event, then ignore the rest for this many seconds (Prefect's
    # reactive trigger with threshold 1: a burst of events starts one run).
    within_s: int = 0
    # More resource labels the event must carry (Prefect's `match`), e.g. a retraining that
    # fires only when there are new labels.
    labels: dict[str, str] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "type": "event",
            "enabled": True,
            "match": {"prefect.resource.id": self.resource_id, **self.labels},
            "expect": [self.event],
            "posture": "Reactive",
            "threshold": 1,
            "within": self.within_s,
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class DeploymentSpec:
    """Everything `prefect deploy` needs to know about one deployment."""

    name: str
    # A module path (`flows.training.train`), not a file path: the flow's module then has the
    # same importable name in the worker's flow-run process and in every Ray worker, which
    # must unpickle references to it. A file-path entrypoint would load it as `training`.
    entrypoint: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[Schedule, ...] = ()
    triggers: tuple[EventTrigger, ...] = ()
    concurrency_limit: int | None = None
    collision_strategy: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def flow_name(self) -> str:
        """The flow's name as Prefect knows it (import-free: read from the entrypoint file)."""
        import ast
        from pathlib import Path

        from driftloop.core.settings import PROJECT_ROOT

        module, function = self.entrypoint.rsplit(".", 1)
        tree = ast.parse((PROJECT_ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == function:
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call):
                        for keyword in decorator.keywords:
                            if keyword.arg != "name":
                                continue
                            if isinstance(keyword.value, ast.Constant):
                                return str(keyword.value.value)
                            if isinstance(keyword.value, ast.Attribute):  # names.FLOW_...
                                return str(getattr(names, keyword.value.attr))
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
            entry["triggers"] = [t.to_yaml() for t in self.triggers]
        return entry
