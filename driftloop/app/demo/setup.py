"""Prepare the demo (feature repo, data registry) and add new batches to it."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from driftloop.app.demo import DEMO_TABLE_PATH
from driftloop.app.demo.churn import (
    ENTITY,
    LABEL,
    TIMESTAMP,
    ChurnBatch,
    DriftSpec,
    batch_windows,
    generate_batch,
)
from driftloop.app.demo.registry import DataRegistry, RegistryRevision
from driftloop.core.settings import DriftloopSettings

PROFILE_VIEW = "customer_profile"
ACTIVITY_VIEW = "customer_activity"
BATCH_DAYS = 7.0


@dataclass(frozen=True)
class DemoConfig:
    """Size and shape of the demo data."""

    rows_per_batch: int = 4000
    initial_batches: int = 3
    seed: int = 42
    # The initial history ends this long before set-up, leaving room for a few new weekly
    # batches before new data catches up with the clock.
    history_gap_days: float = 14.0


def demo_registry(settings: DriftloopSettings) -> DataRegistry:
    return DataRegistry(settings.data_registry_dir, settings.dvc_remote_dir, DEMO_TABLE_PATH)


@contextlib.contextmanager
def _cwd(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _on_sys_path(path: Path):
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))


def feast_apply(repo_path: Path, config_file: str = "feature_store.yaml") -> None:
    """`feast apply` by code: register the repo's entities, views and services (and set up
    the online store that `config_file` names)."""
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    repo_path = Path(repo_path).resolve()
    config = load_repo_config(repo_path, repo_path / config_file)
    # apply_total chdirs into the repo and imports its modules by name, as the CLI does;
    # keep this process's working directory and import path as they were.
    with _cwd(repo_path), _on_sys_path(repo_path):
        apply_total(config, repo_path, skip_source_validation=True)


def _source_path(store, view_name: str) -> Path:
    source = store.get_feature_view(view_name).batch_source
    path = Path(source.path)
    return path if path.is_absolute() else Path(store.repo_path) / path


def append_features(repo_path: Path, batch: ChurnBatch) -> None:
    """Append a batch's feature snapshots to the parquet sources Feast reads.

    Idempotent: a set-up interrupted after this step and run again appends the same
    (deterministic) rows again, and those exact duplicates are dropped."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(Path(repo_path).resolve()))
    for view, rows in ((PROFILE_VIEW, batch.profile), (ACTIVITY_VIEW, batch.activity)):
        path = _source_path(store, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = (
            pd.concat([pd.read_parquet(path), rows], ignore_index=True) if path.exists() else rows
        )
        table = table.drop_duplicates(ignore_index=True)
        tmp = path.with_suffix(".tmp.parquet")
        table.to_parquet(tmp, index=False)
        tmp.replace(path)


def materialize_online(settings: DriftloopSettings) -> None:
    """Fill the demo's online store from its feature rows (Feast `materialize_incremental`),
    so that the serving application answers for the demo's customers from the start; the
    `materialize-churn-features` deployment keeps it fresh afterwards."""
    from feast import FeatureStore

    repo = Path(settings.feature_repo_dir).resolve()
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / settings.feast_config_file)
    store.materialize_incremental(end_date=datetime.now(UTC))


def example_entities(repo_path: Path, count: int = 2) -> list[int]:
    """Customers of the demo's newest feature rows: ids a first request to the serving
    application can use (`up` prints a curl command with them)."""
    from feast import FeatureStore

    from driftloop.app.demo import DEMO_ENTITY

    path = _source_path(FeatureStore(repo_path=str(Path(repo_path).resolve())), ACTIVITY_VIEW)
    if not path.exists():
        return []
    newest = pd.read_parquet(path, columns=[DEMO_ENTITY]).tail(count)
    return [int(i) for i in newest[DEMO_ENTITY]]


def _append_labels(registry: DataRegistry, batch: ChurnBatch) -> pd.DataFrame:
    """The registry's table with the batch's labeled rows added (once: the working copy may
    hold them already if an earlier attempt stopped before its commit)."""
    current = registry.read_table()
    labels = batch.labels[[ENTITY, TIMESTAMP, LABEL]]
    if current is None:
        return labels
    return pd.concat([current, labels], ignore_index=True).drop_duplicates(ignore_index=True)


def _check_feature_repo_state(settings: DriftloopSettings) -> None:
    """The demo feature repo keeps its state in ../.driftloop/feast: it must be ours."""
    from feast.repo_config import load_repo_config

    repo = settings.feature_repo_dir.resolve()
    config = load_repo_config(repo, repo / settings.feast_config_file)
    registry = Path(config.registry.path)
    registry = (registry if registry.is_absolute() else repo / registry).resolve()
    if not registry.is_relative_to(settings.feast_dir.resolve()):
        raise RuntimeError(
            f"The feature repo {repo} keeps its registry at {registry}, outside the state folder "
            f"{settings.home}. Point {settings.feast_config_file} at {settings.feast_dir}, or set "
            "DRIFTLOOP_FEATURE_REPO to a copy of feature_repo/ placed next to the state folder."
        )


def is_prepared(settings: DriftloopSettings) -> bool:
    return demo_registry(settings).exists() and bool(demo_registry(settings).batch_tags())


def prepare_demo(
    settings: DriftloopSettings, config: DemoConfig = DemoConfig(), now: datetime | None = None
) -> list[RegistryRevision]:
    """Create the feature repo state and the data registry with the initial batches.

    Does nothing (returns ``[]``) if the registry already holds batches: state is reused.
    """
    registry = demo_registry(settings)
    if is_prepared(settings):
        return []
    repo_path = settings.feature_repo_dir
    _check_feature_repo_state(settings)
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    feast_apply(repo_path, settings.feast_config_file)
    if not registry.exists():
        registry.init()
    now = now or datetime.now(UTC)
    end = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=config.history_gap_days)
    revisions = []
    for index, (start, stop) in enumerate(batch_windows(end, config.initial_batches, BATCH_DAYS)):
        batch = generate_batch(
            batch=index, rows=config.rows_per_batch, start=start, end=stop, seed=config.seed
        )
        append_features(repo_path, batch)
        table = _append_labels(registry, batch)
        revisions.append(
            registry.commit_table(
                table,
                f"Batch {index + 1}: {len(batch.labels)} customers, "
                f"{start:%Y-%m-%d} to {stop:%Y-%m-%d}",
            )
        )
    return revisions


UNLABELED_BATCH_OFFSET = 10_000


def add_batch(
    settings: DriftloopSettings,
    *,
    rows: int = 4000,
    drift: DriftSpec | None = None,
    seed: int = 42,
    now: datetime | None = None,
    labels: bool = True,
) -> RegistryRevision | None:
    """Add the next week of labeled customers (optionally drifted) to the data registry.

    With `labels=False` only the customers' feature rows reach the feature store (production
    traffic whose outcomes are not known yet): no revision is made, and None is returned."""
    registry = demo_registry(settings)
    if not registry.exists():
        raise RuntimeError(
            f"No demo data registry at {registry.repo}; run `make up` first to create it."
        )
    current = registry.read_table()
    if current is None or current.empty:
        raise RuntimeError(f"The data registry at {registry.repo} holds no batches yet.")
    now = now or datetime.now(UTC)
    start = current[TIMESTAMP].max().to_pydatetime() + timedelta(seconds=1)
    # Once new data has caught up with the clock, a batch's observations span one minute.
    stop = max(min(start + timedelta(days=BATCH_DAYS), now), start + timedelta(minutes=1))
    index = len(registry.batch_tags())
    # Unlabeled traffic draws other customers than the next labeled batch will.
    draw = index if labels else index + UNLABELED_BATCH_OFFSET
    batch = generate_batch(batch=draw, rows=rows, start=start, end=stop, seed=seed, drift=drift)
    append_features(settings.feature_repo_dir, batch)
    if not labels:
        return None
    table = _append_labels(registry, batch)
    kind = "drifted" if drift and drift.is_drifted else "regular"
    return registry.commit_table(
        table,
        f"Batch {index + 1} ({kind}): {rows} customers, {start:%Y-%m-%d %H:%M} to "
        f"{stop:%Y-%m-%d %H:%M}",
    )
