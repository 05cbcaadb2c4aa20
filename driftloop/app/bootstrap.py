"""Set-up of the Prefect side of the embedded stack: block types, default block documents,
and the work pool. Idempotent: existing documents (and the user's edits to them) are kept."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from uuid import UUID

from blocks import (
    DriftPolicy,
    DvcDataset,
    FeastFeatureStore,
    MlflowTracking,
    RayCluster,
    ServingConfig,
)
from blocks._base import DriftloopBlock
from driftloop.app import demo
from driftloop.core import names
from driftloop.core.settings import DriftloopSettings

BLOCK_TYPES: tuple[type[DriftloopBlock], ...] = (
    MlflowTracking,
    FeastFeatureStore,
    DvcDataset,
    RayCluster,
    DriftPolicy,
    ServingConfig,
)


def default_documents(settings: DriftloopSettings) -> dict[type[DriftloopBlock], DriftloopBlock]:
    """The block documents that configure the embedded stack and its demo."""
    return {
        MlflowTracking: MlflowTracking(
            tracking_uri=settings.mlflow_tracking_url,
            experiment_name=demo.DEMO_EXPERIMENT,
            registered_model_name=demo.DEMO_MODEL_NAME,
        ),
        FeastFeatureStore: FeastFeatureStore(
            repo_path=str(settings.feature_repo_dir), config_file=settings.feast_config_file
        ),
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
        # The champion online on the stack's Ray, at http://127.0.0.1:<serving_port>.
        ServingConfig: ServingConfig(
            enabled=settings.serving,
            host=settings.serving_host,
            port=settings.serving_port,
            url=settings.serving_url,
            prediction_log_url=prediction_log_url(settings),
        ),
    }


def prediction_log_url(settings: DriftloopSettings) -> str | None:
    """The default serving block's prediction-log database: DRIFTLOOP_PREDICTION_LOG_URL, else
    (server profile) the local PostgreSQL's `served` database when `up` runs one, else None
    (parquet files in the state folder)."""
    if settings.profile == "server":
        from driftloop.app.server_profile import Databases

        return Databases.of(settings, dict(os.environ)).prediction_log_url
    given = settings.prediction_log_url
    return given.get_secret_value() if given is not None else None


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


def pool_job_template(current: dict | None = None) -> dict:
    """The pool's base job template: the process worker's default (or the pool's current
    one), with two defaults of driftloop's:

    - Flow-run output is *not* streamed through the worker. Streamed output runs through a
      pipe to the worker; if the worker dies, the run's next log line hits the broken pipe and
      the run crashes with it. Unstreamed, a run outlives its worker and finishes; its logs are
      in the Prefect API (the run's Logs tab) either way.
    - An explicit engine `command`: with one, a process worker starts `python -m
      prefect.engine` directly, one cold interpreter per run instead of two (without one it
      first starts a workspace supervisor, which then starts the engine).
    """
    import copy

    from driftloop.app.worker import ENGINE_COMMAND, DriftloopWorker

    template = copy.deepcopy(current or DriftloopWorker.get_default_base_job_template())
    properties = template["variables"]["properties"]
    properties["stream_output"]["default"] = False
    properties["command"]["default"] = ENGINE_COMMAND
    return template


def ensure_work_pool(name: str = names.WORK_POOL) -> None:
    """Create the work pool the deployments run on (of driftloop's worker type), or bring its
    template up to date (only `stream_output` and `command` are driftloop's; other edits to
    the pool are kept). A pool of another type (a `process` pool made by an earlier
    driftloop) is made again: a pool's type cannot change, and `driftloop up` deploys
    prefect.yaml to the new pool right after."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from driftloop.app.worker import WORKER_TYPE

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            pool = None
        if pool is not None and pool.type != WORKER_TYPE:
            client.delete_work_pool(name)
            pool = None
        if pool is None:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name, type=WORKER_TYPE, base_job_template=pool_job_template()
                    )
                )
            return
        wanted = pool_job_template(pool.base_job_template)
        if wanted != pool.base_job_template:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=wanted))


def zombie_automation(heartbeat_s: int, missed: int = 4, name: str = names.ZOMBIE_AUTOMATION):
    """Prefect's documented zombie detection, for driftloop's flow runs: after a heartbeat,
    expect another event of the run (a heartbeat or a state change) within `missed`
    heartbeat intervals; if none comes, the run's process is gone, so mark it Crashed.

    Flow runs send heartbeats every `heartbeat_s` seconds when PREFECT_FLOWS_HEARTBEAT_FREQUENCY
    says so (driftloop's worker sets it). This covers runs on any machine; the service's own
    sweep (driftloop.app.recovery) also catches runs that never reached Running.
    """
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    within = heartbeat_s * missed
    return Automation(
        name=name,
        description=(
            f"Marks a driftloop flow run Crashed when it sent no heartbeat for {within}s "
            "(its process is gone). driftloop resumes such runs."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            # Any event of the run counts: the state events are named after the state's name
            # (a custom Completed name too), so a list of names would miss some.
            expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.tag.{names.TAG_DRIFTLOOP}"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"{names.CRASH_NO_HEARTBEAT}: the run sent no heartbeat for {within}s, "
                    f"so its process is gone (marked Crashed by the automation {name})"
                ),
            )
        ],
    )


def ensure_automation(wanted) -> bool:
    """Create the automation, or replace the one of that name if its definition changed.
    Returns whether anything was written."""
    from prefect.automations import Automation
    from prefect.exceptions import ObjectNotFound

    try:
        current = Automation.read(name=wanted.name)
    except (ObjectNotFound, ValueError):
        current = None
    if current is not None:
        if current.model_dump(exclude={"id"}) == wanted.model_dump(exclude={"id"}):
            return False
        current.delete()
    wanted.create()
    return True


def ensure_zombie_automation(
    heartbeat_s: int, missed: int = 4, name: str = names.ZOMBIE_AUTOMATION
) -> None:
    """Create the zombie-detection automation, or replace it if its definition changed."""
    ensure_automation(zombie_automation(heartbeat_s, missed, name))


def ensure_notification_block(settings: DriftloopSettings) -> UUID:
    """The id of the block document the notifications go through.

    `DRIFTLOOP_NOTIFY_BLOCK` (`<type slug>/<name>`) names one the user made in the UI (Slack,
    e-mail, ...). Otherwise it is driftloop's webhook block to the local receiver, created if
    missing and never overwritten: a user who edits it in the UI (say, to a Slack URL) keeps
    the edit.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if settings.notify_block:
        slug, name = settings.notify_block.split("/", 1)
    else:
        slug, name = CustomWebhookNotificationBlock.get_block_type_slug(), names.NOTIFY_BLOCK
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, slug)
        except ObjectNotFound:
            if settings.notify_block:
                raise ValueError(
                    f"DRIFTLOOP_NOTIFY_BLOCK={settings.notify_block!r}: there is no {slug!r} "
                    f"block named {name!r} (create it in the UI under Blocks first)"
                ) from None
            CustomWebhookNotificationBlock(
                name="driftloop",
                url=settings.notify_url,
                json_data={"subject": "{{subject}}", "body": "{{body}}"},
            ).save(names.NOTIFY_BLOCK)
            document = client.read_block_document_by_name(name, slug)
        capabilities = document.block_schema.capabilities if document.block_schema else []
        if "notify" not in capabilities:
            raise ValueError(
                f"DRIFTLOOP_NOTIFY_BLOCK={settings.notify_block!r} is not a notification block"
            )
        return document.id


def ensure_notification_automations(block_document_id: UUID, renotify_minutes: int) -> int:
    """Create or update the automations that notify a person (deployments.notifications).
    Returns how many were written."""
    from datetime import timedelta

    from deployments.notifications import notification_automations

    wanted = notification_automations(block_document_id, timedelta(minutes=renotify_minutes))
    return sum(ensure_automation(automation) for automation in wanted)


def ensure_notifications(settings: DriftloopSettings) -> tuple[UUID, int]:
    """The notification block and the automations that send through it, created or updated
    on the Prefect server this process talks to (`driftloop up`, `driftloop automations`).
    Returns the block document's id and how many automations were written."""
    block_id = ensure_notification_block(settings)
    return block_id, ensure_notification_automations(block_id, settings.renotify_minutes)
