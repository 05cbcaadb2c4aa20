"""Set-up of the Prefect side of the embedded stack: block types, default block documents,
and the work pool. Idempotent: existing documents (and the user's edits to them) are kept."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from blocks import DriftPolicy, DvcDataset, FeastFeatureStore, MlflowTracking, RayCluster
from blocks._base import DriftloopBlock
from driftloop import demo, names
from driftloop.settings import DriftloopSettings

BLOCK_TYPES: tuple[type[DriftloopBlock], ...] = (
    MlflowTracking,
    FeastFeatureStore,
    DvcDataset,
    RayCluster,
    DriftPolicy,
)


def default_documents(settings: DriftloopSettings) -> dict[type[DriftloopBlock], DriftloopBlock]:
    """The block documents that configure the embedded stack and its demo."""
    return {
        MlflowTracking: MlflowTracking(
            tracking_uri=settings.mlflow_url,
            experiment_name=demo.DEMO_EXPERIMENT,
            registered_model_name=demo.DEMO_MODEL_NAME,
        ),
        FeastFeatureStore: FeastFeatureStore(repo_path=str(settings.feature_repo_dir)),
        DvcDataset: DvcDataset(
            name=demo.DEMO_DATASET,
            repo=str(settings.data_registry_dir),
            path=demo.DEMO_TABLE_PATH,
            entity_columns=[demo.DEMO_ENTITY],
            timestamp_column=demo.DEMO_TIMESTAMP,
            label_column=demo.DEMO_LABEL,
        ),
        # No address: a local Ray per flow run, unless RAY_ADDRESS names a cluster.
        RayCluster: RayCluster(),
        # Evidently's automatic test choice; drift when 30% of the features drifted.
        DriftPolicy: DriftPolicy(),
    }


def register_block_types() -> None:
    """What `prefect block register -m blocks` does, by code."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()


def ensure_default_blocks(
    settings: DriftloopSettings, log: Callable[[str], None] = print
) -> list[str]:
    """Create each missing default document; never overwrite an existing one."""
    created = []
    for block_type, document in default_documents(settings).items():
        slug = block_type.get_block_type_slug()
        try:
            block_type.load(names.DEFAULT_BLOCK)
            continue
        except ValueError:
            pass
        document.save(names.DEFAULT_BLOCK)
        created.append(f"{slug}/{names.DEFAULT_BLOCK}")
        log(f"  created block {slug}/{names.DEFAULT_BLOCK}")
    return created


def ensure_work_pool(name: str = names.WORK_POOL) -> None:
    """Create the process work pool the deployments run on, if it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
