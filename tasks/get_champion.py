"""The current champion, as a step: the registry's one lookup (tasks.registry), run as a task
so the lookup shows in the Prefect UI with the run that depended on it."""

from __future__ import annotations

from prefect import task

from blocks.mlflow import MlflowTracking
from driftloop.core.contracts import ModelVersionRef
from tasks._policy import IN_TRANSACTION, IO_RETRIES, UNCACHED
from tasks.registry import find_champion, require_champion


@task(name="get-champion", cache_policy=UNCACHED, **IN_TRANSACTION)
def get_champion(tracking: MlflowTracking) -> ModelVersionRef | None:
    """The version the `champion` alias points to now (with its decision tags), or None
    before the first promotion. For training, where no champion yet is normal."""
    return find_champion(tracking)


@task(name="require-champion", cache_policy=UNCACHED, **IO_RETRIES)
def get_required_champion(tracking: MlflowTracking) -> ModelVersionRef:
    """The champion, or NoChampionError saying how to get one. For the steps that only make
    sense with a champion: drift monitoring and scoring."""
    return require_champion(tracking)
