"""Step 2: decide what this training run trains on, and whether it trains at all."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.runtime import flow_run as runtime_flow_run

from blocks.mlflow import MlflowTracking
from driftloop.core import dataset_events, names
from driftloop.core.contracts import DatasetVersion, ResolvedFeatures, TrainingPlan
from driftloop.core.params import TriggerContext
from driftloop.core.planning import choose_revision, skip_reason, training_fingerprint
from tasks._policy import IO_RETRIES, UNCACHED

# The modules whose code shapes the trained model: a change to any of them retrains.
TRAINING_CODE = (
    "driftloop.core.modeling",
    "driftloop.core.search",
    "driftloop.core.metric_direction",
    "driftloop.core.timewindows",
    "tasks.split_holdout",
    "tasks.evaluate_trial",
    "tasks.fit_model",
    "tasks.get_historical_features",
)


def code_fingerprint(modules: tuple[str, ...] = TRAINING_CODE) -> str:
    """Hash of the source of the modules that shape the model, read from their files without
    importing them: hashing needs no import. (The modules import scikit-learn and Optuna only
    where they are used, so importing them cost about 3.7 s here, mostly Prefect's and the
    tasks' own imports, which a flow run has done already.)"""
    digest = hashlib.md5()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"training code module {name!r} not found", name=name)
        digest.update(Path(spec.origin).read_text(encoding="utf-8").encode())
    return digest.hexdigest()


def find_version(tracking: MlflowTracking, fingerprint: str) -> tuple[str | None, str | None]:
    """The newest registered version with this training fingerprint, and its decision."""
    client = tracking.activate()
    name = tracking.registered_model_name
    found = client.search_model_versions(
        f"name='{name}' and tags.`{names.TAG_TRAINING_FINGERPRINT}` = '{fingerprint}'"
    )
    if not found:
        return None, None
    newest = max(found, key=lambda v: int(v.version))
    return str(newest.version), newest.tags.get(names.TAG_DECISION)


@task(name="plan-training", cache_policy=UNCACHED, **IO_RETRIES)
def plan_training(
    dataset_name: str,
    dataset_block: str,
    rev: str | None,
    requested: DatasetVersion,
    newest: DatasetVersion,
    trigger: TriggerContext,
) -> TrainingPlan:
    """Which revision to train: the newest one for automated runs (latest wins). A run whose
    revision was superseded, while another training run is there for the newest revision,
    leaves the newest to that run and stops here. Otherwise the run records itself in the
    ledger of the revision it trains, so the new-data check knows the revision is covered."""
    logger = get_run_logger()
    dataset, superseded = choose_revision(trigger.reason, rev, requested, newest)
    flow_run_id = runtime_flow_run.get_id()
    if superseded:
        others = [
            r
            for r in dataset_events.queued_trainings(newest.commit, dataset_block)
            if str(r.id) != str(flow_run_id)
        ]
        if others:
            skip = f"{superseded}; training run {others[0].name!r} trains the newest revision"
            logger.info("Plan: %s", skip)
            return TrainingPlan(dataset=dataset, superseded=superseded, skip=skip)
        logger.info("Latest wins: %s; training %s", superseded, dataset.short)
    if flow_run_id:
        dataset_events.record_training(dataset_name, dataset.md5, dataset.commit, flow_run_id)
    return TrainingPlan(dataset=dataset, superseded=superseded)


@task(name="check-already-trained", cache_policy=UNCACHED, **IO_RETRIES)
def check_already_trained(
    plan: TrainingPlan,
    features: ResolvedFeatures,
    config: dict[str, Any],
    tracking: MlflowTracking,
) -> TrainingPlan:
    """No second version for the same fingerprint: data, features, configuration and code."""
    dataset = plan.dataset
    code = code_fingerprint()
    fingerprint = training_fingerprint(dataset.md5, features.fingerprint, config, code)
    version, decision = find_version(tracking, fingerprint)
    skip = skip_reason(tracking.registered_model_name, version, decision, dataset)
    get_run_logger().info(
        "Plan: %s", skip or f"train on {dataset.short} (fingerprint {fingerprint[:12]})"
    )
    return plan.model_copy(
        update={
            "fingerprint": fingerprint,
            "skip": skip,
            "existing_version": version,
            "existing_decision": decision,
        }
    )
